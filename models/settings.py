"""The one settings object: every environment variable bookfeed reads, typed and validated, with its default.

Only entry points call `get_settings()`; code below them receives the Settings object (or a frozen slice of it, such
as `ReconnectPolicy`), never a copy made field by field. Each field names the processes that read it (`used_by`):
tests/unit/test_settings_documented.py checks that the README documents every field and that docker-compose.yml
passes each one to every service running a process that reads it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.errors import ConfigError
from models.vocabulary import (
    ALL_SYMBOLS,
    DEFAULT_DEPTH,
    DEFAULT_SPEED,
    DEFAULT_SYMBOLS,
    DEPTHS,
    LIVE_REST_URL,
    LIVE_URL,
    MAX_FRAME_BYTES,
    Speed,
    normalise_asset,
    normalise_symbol,
)

__all__ = [
    "PROCESSES",
    "ReconnectPolicy",
    "Settings",
    "env_name",
    "get_settings",
    "load_settings",
    "normalise_database_url",
    "used_by",
]

# The processes that read settings. `up` is the local all-in-one stack (`bookfeed up`), which hands its environment
# to every process it starts; a setting only it reads is listed under it alone.
FEED, WORKER, BEAT, FLOWER, MIGRATE, UP = "feed", "worker", "beat", "flower", "migrate", "up"
API = "api"  # `bookfeed api`, the HTTP/websocket API (api/)
ARCHIVE = "archive"  # `bookfeed archive`: the cold archive and retention, as the tables' owner
# The worker that consumes the `maintenance` queue (beat's retention task) as the tables' owner: every worker started
# without -Q (locally, `bookfeed up`), docker-compose's `maintenance` service.
MAINTENANCE = "maintenance"
PROCESSES = frozenset({FEED, WORKER, BEAT, FLOWER, MIGRATE, UP, API, ARCHIVE, MAINTENANCE})
_CELERY = (WORKER, BEAT, FLOWER, MAINTENANCE)  # every `celery -A workers ...` process loads celeryconfig
_ALL = (FEED, WORKER, BEAT, FLOWER, MIGRATE, API, ARCHIVE, MAINTENANCE)


def _setting(default: Any, *, used_by: tuple[str, ...], **constraints: Any) -> Any:
    """A Settings field with its default, its constraints and the processes that read it."""
    return Field(default=default, json_schema_extra={"used_by": list(used_by)}, **constraints)


def normalise_database_url(url: str) -> str:
    """Rewrite postgres:// and postgresql:// to SQLAlchemy's psycopg2 scheme; reject anything else."""
    for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    raise ValueError("DATABASE_URL must start with postgresql:// (or postgres://)")


def _has_host(url: str) -> bool:
    """A host, and a port that is a number if there is one."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # ValueError when not a number in 0..65535
    except ValueError:
        return False
    return bool(parts.hostname)


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """When the feed's websocket gives up on a connection, and how it tries again (see feed.connection.Connection).
    Built from Settings by `Settings.reconnect_policy`; the backoff is not configurable."""

    silence_timeout_s: float  # no complete message this long: reconnect
    stall_timeout_s: float  # one stream silent this long while connected: a gap
    max_connection_age_s: float  # planned reconnect before the server's connection lifetime ends
    max_reconnect_attempts: int  # failed connects (or connections under 10 s) in a row; 0: forever
    backoff_base_s: float = 0.5  # delay after the first failed connect, doubled after each further one...
    backoff_cap_s: float = 30.0  # ...up to this (each delay then drawn uniformly from its upper half)

    @classmethod
    def default(cls) -> ReconnectPolicy:
        """The policy of the Settings defaults (the environment is not read)."""
        return Settings.model_construct().reconnect_policy

    def backoff_s(self, failures: int) -> float:
        """The longest delay after `failures` failed connects in a row (>= 1)."""
        return min(self.backoff_cap_s, self.backoff_base_s * 2.0 ** min(failures - 1, 32))


class Settings(BaseSettings):
    """Read from the environment (and a local .env): DATABASE_URL, REDIS_URL and BOOKFEED_*."""

    model_config = SettingsConfigDict(
        env_prefix="BOOKFEED_", env_file=".env", extra="ignore", populate_by_name=True, frozen=True
    )

    # Unset means "start the embedded server" for `bookfeed up`; workers and the feed require them.
    database_url: str | None = _setting(
        None, used_by=(WORKER, BEAT, MIGRATE, API, ARCHIVE, MAINTENANCE), validation_alias="DATABASE_URL"
    )
    redis_url: str | None = _setting(None, used_by=(FEED, *_CELERY, API), validation_alias="REDIS_URL")

    # The feed: what to subscribe to (symbols upper case, as everywhere; see models.vocabulary).
    url: str = _setting(LIVE_URL, used_by=(FEED,))
    symbols: Annotated[tuple[str, ...], NoDecode] = _setting(DEFAULT_SYMBOLS, used_by=(FEED,))
    depth: int = _setting(DEFAULT_DEPTH, used_by=(FEED,))  # 5, 10 or 20
    speed: Speed = _setting(DEFAULT_SPEED, used_by=(FEED, API))  # the API: staleness in /v1/health
    # `BOOKFEED_SYMBOLS=all`: every symbol `GET /api/v3/exchangeInfo` lists as TRADING at rest_url, filtered by
    # quote asset and exclusions, refreshed every symbols_refresh_s (feed.universe).
    rest_url: str = _setting(LIVE_REST_URL, used_by=(FEED,))
    quote: Annotated[tuple[str, ...], NoDecode] = _setting((), used_by=(FEED,))  # quote assets kept (empty: all)
    exclude: Annotated[tuple[str, ...], NoDecode] = _setting((), used_by=(FEED,))  # symbols never subscribed
    symbols_refresh_s: float = _setting(3600.0, used_by=(FEED,), ge=10)
    # "i/n": this feed process takes the symbols whose stable hash is i modulo n (feed.universe.shard_of).
    shard: str | None = _setting(None, used_by=(FEED,))
    # Streams on one websocket connection (Binance allows 1024) and connections opened per 5 minutes by this process
    # (Binance allows 300 per IP, all processes together).
    streams_per_connection: int = _setting(200, used_by=(FEED,), ge=1, le=1024)
    connects_per_5m: int = _setting(100, used_by=(FEED,), ge=1, le=300)

    # 1,000: measured 13 % less pipeline CPU than 200 (bench: whole market); at 15,000 frames/s a batch fills in 67 ms.
    batch_max_frames: int = _setting(1000, used_by=(FEED,), ge=1, le=10_000)
    batch_max_wait_ms: int = _setting(100, used_by=(FEED,), ge=1, le=60_000)
    buffer_max_frames: int = _setting(200_000, used_by=(FEED,), ge=1_000)
    # The feed's outage buffer is bounded in bytes too (frame text), whichever limit is reached first.
    buffer_max_bytes: int = _setting(256 * 1024 * 1024, used_by=(FEED,), ge=1024 * 1024)
    # Largest websocket message the feed accepts (bytes, the whole message however fragmented); larger ones are
    # recorded as rejected. Workers refuse frames over MAX_FRAME_BYTES, so a larger value is refused.
    max_frame_bytes: int = _setting(MAX_FRAME_BYTES, used_by=(FEED,), ge=4096, le=MAX_FRAME_BYTES)
    # The feed stops publishing while Redis uses more than this fraction of its maxmemory, keeping the rest free
    # for workers to republish retries (a retry that cannot be published must never lose its batch).
    broker_high_water: float = _setting(0.8, used_by=(FEED,), gt=0, le=1)
    # The reconnect policy (Settings.reconnect_policy).
    silence_timeout_s: float = _setting(30.0, used_by=(FEED,), gt=0)
    stall_timeout_s: float = _setting(10.0, used_by=(FEED,), gt=0)  # one stream silent this long while connected
    max_connection_age_s: float = _setting(23.5 * 3600, used_by=(FEED,), gt=0)
    max_reconnect_attempts: int = _setting(0, used_by=(FEED,), ge=0)  # 0: retry forever
    ledger_path: str | None = _setting(None, used_by=(FEED,))  # audit file: one line per forwarded frame (chaos)

    # Workers and beat.
    averages_grace_s: float = _setting(5.0, used_by=(WORKER,), ge=0)
    averages_lookback_s: float = _setting(600.0, used_by=(WORKER,), gt=0)
    # A closed window waits for books still queued (received in it) while they are at most this old; 0: never.
    averages_queue_wait_s: float = _setting(120.0, used_by=(WORKER,), ge=0)
    ingest_max_retries: int = _setting(30, used_by=(WORKER,), ge=0)  # PostgreSQL-unavailable retries of one batch
    ingest_poison_retries: int = _setting(3, used_by=(WORKER,), ge=0)  # retries after an unexpected error
    # Deliveries of one batch (counted in Redis, so a batch that kills its worker is counted too) before it is
    # stored frame by frame; two deliveries more and its frames are recorded as rejected without parsing.
    ingest_max_deliveries: int = _setting(5, used_by=(WORKER,), ge=1)
    # Beat logs a WARNING while the newest closed averages window is older than this (no worker on `metrics`?);
    # `bookfeed status` reports degraded then.
    averages_stale_s: float = _setting(180.0, used_by=(BEAT, WORKER, UP), gt=0)
    visibility_timeout_s: int = _setting(300, used_by=_CELERY, ge=10)
    broker_key_prefix: str = _setting("", used_by=(FEED, *_CELERY, API), max_length=64, pattern=r"^[A-Za-z0-9:_.-]*$")

    # Optional logins `bookfeed migrate` creates for least-privilege access (docker-compose sets them).
    worker_db_user: str = _setting("", used_by=(MIGRATE,), max_length=63)
    worker_db_password: SecretStr = _setting(SecretStr(""), used_by=(MIGRATE,))
    reader_db_user: str = _setting("", used_by=(MIGRATE,), max_length=63)
    reader_db_password: SecretStr = _setting(SecretStr(""), used_by=(MIGRATE,))

    # `bookfeed api`: every request needs `Authorization: Bearer <token>` when set; the most items one response
    # carries (`limit`), and the longest `end - start` one request may ask for.
    api_token: SecretStr = _setting(SecretStr(""), used_by=(API,))
    api_max_limit: int = _setting(1000, used_by=(API,), ge=1, le=100_000)
    api_max_range_s: float = _setting(86_400.0, used_by=(API,), gt=0)

    # Operations: where the feed and each worker node serve Prometheus /metrics (0: not served), and the thresholds
    # of `bookfeed status` (stack/status.py), which the worker's compose healthcheck and `bookfeed up` run. A stream
    # is stale when its newest stored book is older than max(status_stale_s, 10 update intervals).
    metrics_port: int = _setting(9101, used_by=(FEED,), ge=0, le=65535)
    worker_metrics_port: int = _setting(9102, used_by=(WORKER,), ge=0, le=65535)
    status_stale_s: float = _setting(10.0, used_by=(WORKER, UP, API), gt=0)
    status_queue_age_s: float = _setting(60.0, used_by=(WORKER, UP, API), gt=0)  # oldest waiting batch: degraded beyond
    status_down_s: float = _setting(120.0, used_by=(WORKER, UP, API), gt=0)  # no book stored at all this long: down

    # The cold archive (opt-in): a directory or a pyarrow filesystem URI (s3://bucket/prefix) where each closed UTC
    # day is written to Parquet and verified (workers/archive.py); the API and `bookfeed export` read it for days
    # retention dropped. Retention: beat's hourly task (on the `maintenance` queue) and `bookfeed archive` drop day
    # partitions older than N days (only days the archive verified, when it is set).
    archive_url: str | None = _setting(None, used_by=(WORKER, API, ARCHIVE, MAINTENANCE))
    # Beat sends the retention task only when it is set; the maintenance worker reads it again.
    retention_days: int | None = _setting(None, used_by=(BEAT, MAINTENANCE, ARCHIVE), ge=1)

    data_dir: Path = _setting(Path(".bookfeed"), used_by=(UP,))
    log_format: Literal["auto", "json", "text"] = _setting("auto", used_by=_ALL)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _setting("INFO", used_by=_ALL)

    @property
    def reconnect_policy(self) -> ReconnectPolicy:
        """The feed's reconnect knobs as one frozen object."""
        return ReconnectPolicy(
            silence_timeout_s=self.silence_timeout_s,
            stall_timeout_s=self.stall_timeout_s,
            max_connection_age_s=self.max_connection_age_s,
            max_reconnect_attempts=self.max_reconnect_attempts,
        )

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
    def _symbols(cls, v: object, info: ValidationInfo) -> tuple[str, ...]:
        """Comma-separated or a sequence, any case: upper case, the symbol vocabulary (``btcusdt`` -> ``BTCUSDT``)."""
        items = v.split(",") if isinstance(v, str) else list(v)  # type: ignore[call-overload]
        names = [str(s).strip() for s in items if str(s).strip()]
        if any(n.upper() == ALL_SYMBOLS for n in names):
            if len(names) > 1:
                raise ValueError("'all' cannot be combined with symbol names (use BOOKFEED_EXCLUDE)")
            if "streams=" in urlsplit(str(info.data.get("url", ""))).query:
                # The URL would fix the streams: the exchange's list could never be subscribed.
                raise ValueError("'all' takes its streams from exchangeInfo: give BOOKFEED_URL without ?streams=")
            return (ALL_SYMBOLS,)
        symbols = tuple(dict.fromkeys(normalise_symbol(n) for n in names))
        if not symbols:
            raise ValueError("at least one symbol is required")
        return symbols

    @field_validator("quote", "exclude", mode="before")
    @classmethod
    def _names(cls, v: object, info: ValidationInfo) -> tuple[str, ...]:
        """Comma-separated or a sequence, any case: upper case, duplicates dropped, empty allowed; only with `all`
        (an explicit list is subscribed as given)."""
        items = v.split(",") if isinstance(v, str) else list(v)  # type: ignore[call-overload]
        names = tuple(dict.fromkeys(normalise_asset(str(s)) for s in items if str(s).strip()))
        if names and info.data.get("symbols", (ALL_SYMBOLS,)) != (ALL_SYMBOLS,):
            raise ValueError("only applies with BOOKFEED_SYMBOLS=all (an explicit list is subscribed as given)")
        return names

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        m = re.fullmatch(r"\s*(\d{1,4})\s*/\s*(\d{1,4})\s*", v)
        if m is None or not 0 <= int(m[1]) < int(m[2]):
            raise ValueError(f"shard must be i/n with 0 <= i < n (e.g. 0/2), got {v.strip()[:20]!r}")
        return f"{int(m[1])}/{int(m[2])}"

    @field_validator("rest_url")
    @classmethod
    def _rest_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("the REST URL must start with http:// or https://")
        if not _has_host(v):
            raise ValueError("the REST URL needs a host and a numeric port, if any: http[s]://host[:port]")
        return v.rstrip("/")

    @property
    def all_symbols(self) -> bool:
        """`BOOKFEED_SYMBOLS=all`: the symbol list comes from the exchange (feed.universe)."""
        return self.symbols == (ALL_SYMBOLS,)

    @property
    def shard_of_n(self) -> tuple[int, int]:
        """(i, n) of `shard`; (0, 1) when unset."""
        if self.shard is None:
            return (0, 1)
        i, n = self.shard.split("/")
        return (int(i), int(n))

    @field_validator("depth")
    @classmethod
    def _depth(cls, v: int) -> int:
        if v not in DEPTHS:
            raise ValueError(f"depth must be one of {', '.join(map(str, DEPTHS))}")
        return v

    @field_validator("url")
    @classmethod
    def _ws_url(cls, v: str) -> str:
        if not v.startswith(("ws://", "wss://")):
            raise ValueError("the feed URL must start with ws:// or wss://")
        if not _has_host(v):
            raise ValueError("the feed URL needs a host and a numeric port, if any: ws[s]://host[:port][/path]")
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
        name = env_name(where.lower()) if where.lower() in Settings.model_fields else f"BOOKFEED_{where.upper()}"
        raise ConfigError(f"invalid {name}: {err['msg']}") from None


def env_name(field: str) -> str:
    """The environment variable of a Settings field: its alias (DATABASE_URL) or BOOKFEED_<NAME>."""
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else f"BOOKFEED_{field.upper()}"


def used_by(field: str) -> frozenset[str]:
    """The processes (PROCESSES) that read a Settings field."""
    extra = Settings.model_fields[field].json_schema_extra
    names = extra.get("used_by", []) if isinstance(extra, dict) else []
    return frozenset(str(n) for n in names) if isinstance(names, list) else frozenset()


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once. Entry points only."""
    return load_settings()
