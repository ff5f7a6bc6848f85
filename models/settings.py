"""The one settings object: every environment variable bookfeed reads, typed and validated.

Only entry points call `get_settings()`; code below them receives plain values.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.book import MAX_FRAME_BYTES
from models.errors import ConfigError

__all__ = ["DEFAULT_SYMBOLS", "LIVE_URL", "Settings", "get_settings", "normalise_database_url"]

LIVE_URL = "wss://stream.binance.com:9443"
DEFAULT_SYMBOLS = ("btcusdt", "ethusdt", "bnbusdt")


def normalise_database_url(url: str) -> str:
    """Rewrite postgres:// and postgresql:// to SQLAlchemy's psycopg2 scheme; reject anything else."""
    for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    raise ValueError("DATABASE_URL must start with postgresql:// (or postgres://)")


class Settings(BaseSettings):
    """Read from the environment (and a local .env): DATABASE_URL, REDIS_URL and BOOKFEED_*."""

    model_config = SettingsConfigDict(
        env_prefix="BOOKFEED_", env_file=".env", extra="ignore", populate_by_name=True, frozen=True
    )

    # Unset means "start the embedded server" for `bookfeed up`; workers and the feed require them.
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")

    url: str = LIVE_URL
    symbols: Annotated[tuple[str, ...], NoDecode] = DEFAULT_SYMBOLS
    depth: int = 20  # 5, 10 or 20
    speed: Literal["1000ms", "100ms"] = "1000ms"

    batch_max_frames: int = Field(default=200, ge=1, le=10_000)
    batch_max_wait_ms: int = Field(default=100, ge=1, le=60_000)
    buffer_max_frames: int = Field(default=200_000, ge=1_000)
    # The feed's outage buffer is bounded in bytes too (frame text), whichever limit is reached first.
    buffer_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    # Largest websocket message the feed accepts (bytes, the whole message however fragmented); larger ones are
    # recorded as rejected. Workers refuse frames over MAX_FRAME_BYTES, so a larger value is refused.
    max_frame_bytes: int = Field(default=MAX_FRAME_BYTES, ge=4096, le=MAX_FRAME_BYTES)
    # The feed stops publishing while Redis uses more than this fraction of its maxmemory, keeping the rest free
    # for workers to republish retries (a retry that cannot be published must never lose its batch).
    broker_high_water: float = Field(default=0.8, gt=0, le=1)
    silence_timeout_s: float = Field(default=30.0, gt=0)
    stall_timeout_s: float = Field(default=10.0, gt=0)  # one stream silent this long while connected: a gap
    max_connection_age_s: float = Field(default=23.5 * 3600, gt=0)
    max_reconnect_attempts: int = Field(default=0, ge=0)  # 0: retry forever

    averages_grace_s: float = Field(default=5.0, ge=0)
    averages_lookback_s: float = Field(default=600.0, gt=0)
    ingest_max_retries: int = Field(default=30, ge=0)  # PostgreSQL-unavailable retries of one batch
    ingest_poison_retries: int = Field(default=3, ge=0)  # retries after an unexpected error in one batch
    # Deliveries of one batch (counted in Redis, so a batch that kills its worker is counted too) before it is
    # stored frame by frame; two deliveries more and its frames are recorded as rejected without parsing.
    ingest_max_deliveries: int = Field(default=5, ge=1)
    # Beat logs a WARNING while the newest closed averages window is older than this (no worker on `metrics`?).
    averages_stale_s: float = Field(default=180.0, gt=0)
    visibility_timeout_s: int = Field(default=300, ge=10)
    broker_key_prefix: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9:_.-]*$")
    # Optional logins `bookfeed migrate` creates for least-privilege access (docker-compose sets them).
    worker_db_user: str = Field(default="", max_length=63)
    worker_db_password: SecretStr = SecretStr("")
    reader_db_user: str = Field(default="", max_length=63)
    reader_db_password: SecretStr = SecretStr("")
    ledger_path: str | None = None  # feed audit file: one line per forwarded frame (chaos suite)

    data_dir: Path = Path(".bookfeed")
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, v: str | None) -> str | None:
        return normalise_database_url(v) if v else None

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v and not v.startswith(("redis://", "rediss://", "redis+socket://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return v or None

    @field_validator("symbols", mode="before")
    @classmethod
    def _symbols(cls, v: object) -> tuple[str, ...]:
        items = v.split(",") if isinstance(v, str) else list(v)  # type: ignore[call-overload]
        symbols = tuple(dict.fromkeys(str(s).strip().lower() for s in items if str(s).strip()))
        if not symbols:
            raise ValueError("at least one symbol is required")
        for s in symbols:
            if not (2 <= len(s) <= 20 and s.isascii() and s.isalnum()):
                raise ValueError(f"symbol {s!r} is not 2-20 letters or digits")
        return symbols

    @field_validator("depth")
    @classmethod
    def _depth(cls, v: int) -> int:
        if v not in (5, 10, 20):
            raise ValueError("depth must be 5, 10 or 20")
        return v

    @field_validator("url")
    @classmethod
    def _ws_url(cls, v: str) -> str:
        if not v.startswith(("ws://", "wss://")):
            raise ValueError("the feed URL must start with ws:// or wss://")
        return v

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError("DATABASE_URL is not set")
        return self.database_url

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ConfigError("REDIS_URL is not set")
        return self.redis_url


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning validation errors into one readable ConfigError line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        aliases = {"database_url": "DATABASE_URL", "redis_url": "REDIS_URL"}
        name = aliases.get(where.lower(), f"BOOKFEED_{where.upper()}")
        raise ConfigError(f"invalid {name}: {err['msg']}") from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once. Entry points only."""
    return load_settings()
