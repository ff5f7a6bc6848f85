"""`GET /v1/health`: the feed and queue health the live page shows, in the shape of `bookfeed status --json`, read
cheaply enough for a page that polls it: one Redis round trip (queue lengths, unacknowledged tasks, the outbox and
its oldest batches' first receive times) and one SQL query (each symbol's newest stored book, over book_metrics).
Feeds and workers are not counted here (that takes a scan of Redis' keyspace and a broadcast ping: `bookfeed
status` does both); they are null. Read-only; imports no worker or feed code, so the Redis key names are its own
copy of workers.outbox's (tests/integration/api/test_health.py keeps them equal)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from models.feedstats import feed_problems, live_stats, stats_pattern
from models.outbox import OutboxKeys
from models.settings import Settings
from models.vocabulary import QUEUES

__all__ = ["STATES", "HealthProbe", "HealthThresholds", "RedisKeys", "redis_keys"]

STATES = ("healthy", "degraded", "down")  # bookfeed status' states, in order of severity
RECENT_S = 600.0  # symbols with a book stored in this many seconds are checked (as `bookfeed status` does)
_OLDEST_LOOKED_AT = 5  # outbox entries read for the oldest waiting batch (a gap-only batch carries no frame)
_FIRST_FRAME = re.compile(r'"frames":\s*\[\s*\[\s*(\d+)')
# One round trip: every length, then the head of each of the oldest batches' payloads (the first frame's
# received_ns is in its first few hundred bytes). KEYS: payload, seq, unacked, then the queues. ARGV: how many.
_PROBE_LUA = """
local out = {redis.call('HLEN', KEYS[3]), redis.call('ZCARD', KEYS[2])}
for i = 4, #KEYS do out[#out + 1] = redis.call('LLEN', KEYS[i]) end
local heads = {}
for i, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)) do
  local p = redis.call('HGET', KEYS[1], id)
  heads[i] = p and string.sub(p, 1, 400) or ''
end
out[#out + 1] = heads
return out
"""
# Each symbol's newest book among those stored in the last RECENT_S: the identity index leads with received_at,
# so this reads only the recent books' index entries.
_NEWEST_SQL = text(
    "SELECT symbol, extract(epoch FROM to_timestamp(:now) - max(received_at)) AS age_s FROM book_metrics "
    "WHERE received_at > to_timestamp(:since) GROUP BY symbol ORDER BY symbol"
)


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The Redis keys the probe reads, under a deployment's broker key prefix."""

    payload: str  # hash: batch id -> batch JSON (the outbox)
    seq: str  # zset: batch id -> its place in the queue (batches not yet committed)
    unacked: str  # kombu's hash of delivered, unacknowledged messages
    queues: tuple[str, ...]  # the Celery queues' lists (models.vocabulary.QUEUES)
    feed_stats: str = stats_pattern()  # SCAN pattern of the feeds' stats (models.feedstats)


def redis_keys(prefix: str = "") -> RedisKeys:
    """The outbox's keys (models.outbox.OutboxKeys: `<prefix>bookfeed:outbox:payload`, `…:seq`, `<prefix>unacked`)
    and the queues' lists (`<prefix>ingest`, `<prefix>metrics`)."""
    keys = OutboxKeys(prefix)
    return RedisKeys(
        payload=keys.payload,
        seq=keys.seq,
        unacked=keys.unacked,
        queues=tuple(prefix + q for q in QUEUES),
        feed_stats=stats_pattern(prefix),
    )


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    """bookfeed status' thresholds (Settings): stale symbol, old waiting batch (degraded), no book at all (down)."""

    stale_s: float
    queue_age_s: float
    down_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> HealthThresholds:
        # A symbol is stale after max(status_stale_s, 10 update intervals at BOOKFEED_SPEED), as in `bookfeed status`.
        interval_s = int(settings.speed.removesuffix("ms")) / 1000
        return cls(max(settings.status_stale_s, 10 * interval_s), settings.status_queue_age_s, settings.status_down_s)


def _queues(client: redis.Redis, keys: RedisKeys, now: float) -> dict[str, Any]:
    all_keys = [keys.payload, keys.seq, keys.unacked, *keys.queues]
    unacked, outbox, *rest = client.eval(_PROBE_LUA, len(all_keys), *all_keys, _OLDEST_LOOKED_AT)
    *lengths, heads = rest
    received = []
    for head in heads:
        m = _FIRST_FRAME.search(head.decode("utf-8", "replace") if isinstance(head, bytes) else str(head))
        if m:
            received.append(int(m.group(1)))
    depth = {q: int(n) for q, n in zip(QUEUES, lengths, strict=True)}
    oldest = max(0.0, now - min(received) / 1e9) if received else 0.0
    return {
        "queues": depth,
        "unacked": int(unacked),
        "outbox": int(outbox),
        "queue_depth": sum(depth.values()) + int(unacked),
        "oldest_batch_age_s": round(oldest, 3),
    }


def _feeds(client: redis.Redis, keys: RedisKeys, now: float) -> list[dict[str, Any]]:
    """The live feeds' stats (one SCAN of the stats keys and one MGET)."""
    names = list(client.scan_iter(keys.feed_stats, count=1000))
    stats: list[dict[str, Any]] = []
    for raw in client.mget(names) if names else []:
        try:
            value = json.loads(raw) if raw else None
        except ValueError:
            value = None
        if isinstance(value, dict):
            stats.append(value)
    return live_stats(stats, now)


def _symbols(engine: Engine, now: float, stale_s: float) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(_NEWEST_SQL, {"now": now, "since": now - RECENT_S}).all()
    out = []
    for symbol, age in rows:
        age_s = max(0.0, round(float(age), 3))
        out.append({"symbol": symbol, "last_book_age_s": age_s, "stale": age_s > stale_s})
    return out


def _problems(body: dict[str, Any], limits: HealthThresholds) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    oldest = body.get("oldest_batch_age_s")
    if oldest is not None and oldest > limits.queue_age_s:
        found.append((1, f"the oldest waiting batch is {oldest:.0f} s old"))
    symbols: Sequence[dict[str, Any]] | None = body.get("symbols")
    if symbols is None:
        return found
    if not symbols:
        found.append((2, f"nothing stored in the last {RECENT_S:.0f} s"))
        return found
    stale = [s for s in symbols if s["stale"]]
    if stale:
        listed = ", ".join(f"{s['symbol']} ({s['last_book_age_s']:.0f} s)" for s in stale[:5])
        more = f" and {len(stale) - 5} more" if len(stale) > 5 else ""
        found.append((1, f"{len(stale)} of {len(symbols)} symbols stale (no book stored lately): {listed}{more}"))
    if body["database_lag_s"] > limits.down_s:
        found.append((2, f"no book stored for over {limits.down_s:.0f} s"))
    return found


class HealthProbe:
    """Reads the health at most once every `ttl_s` (many pages polling cost one probe); never raises for a service
    that does not answer: that is a `down` problem in the body."""

    def __init__(
        self, engine: Engine, redis_url: str | None, *, prefix: str, limits: HealthThresholds, ttl_s: float
    ) -> None:
        self._engine, self._keys, self._limits, self._ttl_s = engine, redis_keys(prefix), limits, ttl_s
        self._client = (
            redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2) if redis_url else None
        )
        self._lock = threading.Lock()
        self._body: dict[str, Any] = {}
        self._read_at = -float("inf")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def read(self) -> dict[str, Any]:
        """`{state, problems, checked_at, queue_depth, queues, unacked, outbox, oldest_batch_age_s, feeds,
        workers_alive, database_lag_s, symbols: [{symbol, last_book_age_s, stale}]}`; ages in seconds."""
        with self._lock:
            if time.monotonic() - self._read_at >= self._ttl_s:
                self._body, self._read_at = self._probe(), time.monotonic()
            return self._body

    def _probe(self) -> dict[str, Any]:
        now = time.time()
        # workers_alive stays None here: telling live workers takes a Celery ping, which waits its timeout on every
        # probe; `bookfeed status` pings.
        body: dict[str, Any] = {"checked_at": now, "feeds": None, "workers_alive": None}
        down: list[str] = []
        feed_issues: list[str] = []
        if self._client is None:
            down.append("REDIS_URL is not set: the queues cannot be read")
        else:
            try:
                body.update(_queues(self._client, self._keys, now))
                feeds = _feeds(self._client, self._keys, now)
            except (redis.RedisError, OSError) as exc:
                down.append(f"Redis does not answer: {exc}")
            else:
                body["feeds"] = len(feeds)
                feed_issues = feed_problems(feeds)
        body.setdefault("queue_depth", None)
        body.setdefault("oldest_batch_age_s", None)
        try:
            symbols = _symbols(self._engine, time.time(), self._limits.stale_s)
        except SQLAlchemyError as exc:
            down.append(f"PostgreSQL does not answer: {str(exc).splitlines()[0]}")
            body["symbols"], body["database_lag_s"] = None, None
        else:
            body["symbols"] = symbols
            body["database_lag_s"] = min((s["last_book_age_s"] for s in symbols), default=None)
        found = [(2, p) for p in down] + [(1, p) for p in feed_issues] + _problems(body, self._limits)
        code = max((c for c, _ in found), default=0)
        return {"state": STATES[code], "problems": [p for _, p in found], **body}
