"""The one Settings object: every knob the service reads from its environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(Exception):
    """The environment does not describe a service that can start; one line says why."""


class Settings(BaseSettings):
    """Environment settings; names are the contract's (upper-case in the environment)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # Where local state of the embedded default lives (SQLite file, generated key file).
    data_dir: Path = Path("data")
    database_url: str = ""
    redis_url: str | None = None
    # Prefix of every Redis key this process writes, so that test runs and
    # deployments sharing one Redis never see each other's keys.
    redis_key_prefix: str = "msg:"

    operator_token: str | None = None

    carrier: Literal["telnyx", "twilio", "simulator"] = "simulator"
    telnyx_api_key: str | None = None
    telnyx_public_key: str | None = None
    telnyx_api_base: str = "https://api.telnyx.com"
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_api_base: str = "https://api.twilio.com"
    public_base_url: str = "http://127.0.0.1:8000"
    # Comma-separated origins (`https://app.example.org`) whose pages may call the API
    # from a browser; unset: no CORS headers at all.
    cors_allowed_origins: str | None = None

    encryption_keys: str | None = None

    auto_reply_window_seconds: float = Field(default=30, gt=0)
    webhook_tolerance_seconds: int = Field(default=300, gt=0)
    carrier_send_rate_per_number: float = Field(default=1, gt=0)
    # Requests per token per minute, a send counting one per message it creates.
    api_rate_limit_per_minute: int = Field(default=1200, gt=0)

    # Beyond the contract.
    # Per process: 4 web processes and a worker at these defaults open at most 75
    # connections, inside PostgreSQL's default max_connections of 100. A fixed pool: an
    # overflow connection is opened under load and closed again on return, and opening
    # one (TCP, TLS negotiation, authentication, settings) costs more than the requests
    # it serves.
    database_pool_size: int = Field(default=15, gt=0)
    database_max_overflow: int = Field(default=0, ge=0)
    # The longest wait for the database: connecting, one statement, a pooled connection.
    database_timeout_seconds: float = Field(default=5.0, gt=0)
    # A ping per connection checkout costs a round trip on every request; without it a
    # connection broken by a database restart fails one request (a 503 that carriers
    # retry) and is replaced.
    database_pre_ping: bool = False
    max_request_bytes: int = Field(default=256 * 1024, gt=0)
    # Failed authentications (401) per client address per minute; past them the address
    # is refused (429) until the minute ends, whatever token it sends.
    auth_failure_limit_per_minute: int = Field(default=30, gt=0)
    # Parties one send may reach (users, group members, phone numbers).
    max_recipients_per_send: int = Field(default=250, gt=0)
    run_worker: bool = True
    worker_batch_size: int = Field(default=50, gt=0)
    worker_concurrency: int = Field(default=50, gt=0)
    worker_poll_seconds: float = Field(default=0.5, gt=0)
    # New outbound work is given this long to gather before it is claimed, so that what
    # arrives together is claimed (and recorded) together.
    worker_batch_window_seconds: float = Field(default=0.05, ge=0)
    # A web process's own worker (RUN_WORKER) delivers at most this many messages a
    # second while its web tier is busy, the rest when the load eases; 0: no bound.
    # Measured with two processes on two cores: 100 a second let webhooks reach 0.48-0.51
    # of the benchmark's floor, 50 a second 0.52-0.57 (bench/README.md).
    worker_rate_while_busy: float = Field(default=50, ge=0)
    carrier_timeout_seconds: float = Field(default=10, gt=0)
    delivery_max_attempts: int = Field(default=8, gt=0)
    delivery_backoff_base_seconds: float = Field(default=1.0, gt=0)
    delivery_backoff_max_seconds: float = Field(default=300, gt=0)
    # A send whose worker vanished after calling the carrier waits this long for
    # the carrier's status report before it is sent again.
    delivery_in_doubt_grace_seconds: float = Field(default=120, gt=0)
    auto_migrate: bool | None = None
    log_level: str = "INFO"
    log_json: bool = True
    events_retention_seconds: int = Field(default=600, gt=0)
    events_max_retained: int = Field(default=100_000, gt=0)
    events_heartbeat_seconds: float = Field(default=15, gt=0)
    # How often open event streams are checked against revocations and group changes
    # (the contract ends such a stream within 5 seconds).
    events_auth_recheck_seconds: float = Field(default=1.0, gt=0, le=4)
    events_max_streams_per_user: int = Field(default=10, gt=0)
    default_help_text: str = (
        "Reply STOP to unsubscribe, START to resubscribe. Msg&data rates may apply."
    )

    def problems(self) -> list[str]:
        """What is missing for the service to start, one sentence each."""
        found = []
        if self.carrier == "telnyx" and not self.telnyx_api_key:
            found.append("CARRIER=telnyx needs TELNYX_API_KEY")
        if self.carrier == "twilio":
            missing = [
                name
                for name, value in (
                    ("TWILIO_ACCOUNT_SID", self.twilio_account_sid),
                    ("TWILIO_AUTH_TOKEN", self.twilio_auth_token),
                )
                if not value
            ]
            if missing:
                found.append(f"CARRIER=twilio needs {' and '.join(missing)}")
        if not self.is_sqlite and not self.encryption_keys:
            found.append(
                "ENCRYPTION_KEYS must be set when DATABASE_URL is not the embedded default"
            )
        return found

    def require_complete(self) -> Settings:
        """These settings, or SettingsError naming everything that is missing."""
        found = self.problems()
        if found:
            raise SettingsError("; ".join(found) + " (see the README's settings)")
        return self

    def describe(self) -> str:
        """Which carrier and database this process uses, for the start banner."""
        if self.is_sqlite:
            database = f"SQLite file {self.data_dir / 'messaging.db'}"
        else:
            database = "PostgreSQL at " + self.effective_database_url.rpartition("@")[2]
        redis = (
            "Redis at " + self.redis_url.rpartition("@")[2]
            if self.redis_url
            else "in-process limiter and event bus"
        )
        return f"{self.carrier} carrier, {database}, {redis}"

    @property
    def cors_origins(self) -> list[str]:
        """CORS_ALLOWED_ORIGINS as a list, without blanks or trailing slashes."""
        raw = self.cors_allowed_origins or ""
        return [o.strip().rstrip("/") for o in raw.split(",") if o.strip()]

    @property
    def effective_database_url(self) -> str:
        """The database URL, or the embedded default's SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'messaging.db').as_posix()}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def should_auto_migrate(self) -> bool:
        """Migrate at start-up: on by default for the embedded SQLite database only."""
        if self.auto_migrate is not None:
            return self.auto_migrate
        return self.is_sqlite


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment (SettingsError when a
    value is not valid)."""
    try:
        return Settings()
    except ValidationError as exc:
        bad = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']).upper() or 'settings'}: {e['msg']}"
            for e in exc.errors()
        )
        raise SettingsError(f"invalid setting: {bad}") from None
