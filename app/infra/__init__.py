"""Plumbing that is not a rule: batching calls, the event bus, limiter storage, caches.

Nothing here knows the product's rules; services use these to keep them."""
