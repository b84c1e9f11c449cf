"""Development tools: the carrier simulator server. Not part of the service."""
