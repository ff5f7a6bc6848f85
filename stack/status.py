"""`bookfeed status`: is the pipeline healthy (0), degraded (1) or down (2)? One code path for the command, the
compose healthcheck and `bookfeed up`'s live view. It reads the public views, the feeds' stats and the queues in
Redis, and pings the Celery workers; it writes nothing. `format_status` returns text; only the CLI prints."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from feed.broker import broker_app
from feed.service import read_feed_stats
from models.errors import InvalidBookError
from models.feedstats import feed_problems, live_stats
from models.settings import Settings
from models.vocabulary import EXCHANGE, INGEST_QUEUE, WINDOWS_S, parse_stream_name
from workers.metrics import queue_state

__all__ = ["DEGRADED", "DOWN", "HEALTHY", "STATES", "Status", "SymbolStatus", "check_status", "format_status"]

HEALTHY, DEGRADED, DOWN = 0, 1, 2
STATES = {HEALTHY: "healthy", DEGRADED: "degraded", DOWN: "down"}
RATE_WINDOW_S = 30.0  # frames/s per symbol: books stored in this many seconds before now
RECENT_SYMBOLS_S = 600.0  # with no feed reporting, the symbols stored in this many seconds are checked
_MAX_LISTED = 5  # stale symbols named in a problem line

_LATEST = text(
    "SELECT s.symbol, extract(epoch FROM to_timestamp(:now) - b.received_at), "
    "  extract(epoch FROM to_timestamp(:now) - f.received_at), "
    "  (SELECT count(*) FROM book_metrics r WHERE r.exchange = :exchange AND r.symbol = s.symbol "
    "   AND r.received_at > to_timestamp(:now - :rate_s)) "
    "FROM unnest(CAST(:symbols AS text[])) AS s(symbol) "
    "LEFT JOIN LATERAL (SELECT received_at FROM book_metrics m WHERE m.exchange = :exchange AND m.symbol = s.symbol "
    "  ORDER BY m.received_at DESC LIMIT 1) b ON true "
    "LEFT JOIN LATERAL (SELECT received_at FROM book_metrics m WHERE m.exchange = :exchange AND m.symbol = s.symbol "
    "  ORDER BY m.received_at LIMIT 1) f ON true"
)
_RECENT_SYMBOLS = text(
    "SELECT DISTINCT symbol FROM book_metrics WHERE exchange = :exchange AND received_at > to_timestamp(:since)"
)
_GAPS = text(
    "SELECT symbol, count(*) FROM feed_gaps WHERE exchange = :exchange AND end_at > to_timestamp(:now - 3600) "
    "GROUP BY symbol"
)
_AVERAGES = text(
    "SELECT w.window_seconds, extract(epoch FROM to_timestamp(:now) - max(a.window_end)) "
    "FROM unnest(CAST(:windows AS integer[])) AS w(window_seconds) "
    "CROSS JOIN unnest(CAST(:symbols AS text[])) AS s(symbol) "
    "LEFT JOIN LATERAL (SELECT window_end FROM price_averages p WHERE p.exchange = :exchange "
    "  AND p.symbol = s.symbol AND p.window_seconds = w.window_seconds ORDER BY p.window_start DESC LIMIT 1) a "
    "  ON true GROUP BY w.window_seconds"
)


@dataclass(frozen=True, slots=True)
class SymbolStatus:
    symbol: str
    last_book_age_s: float | None  # None: nothing stored
    frames_per_s: float  # stored, over the last RATE_WINDOW_S
    gaps_last_hour: int
    stale: bool
    stale_after_s: float  # max(status_stale_s, 10 update intervals of its stream)


@dataclass(frozen=True, slots=True)
class Status:
    """What `bookfeed status` found. `code` is the exit code (HEALTHY, DEGRADED, DOWN); each problem is a line."""

    code: int
    problems: tuple[str, ...]
    stale_after_s: float  # for streams at BOOKFEED_SPEED; each symbol has its own (its stream's speed)
    symbols: tuple[SymbolStatus, ...] = ()
    feeds: int | None = None  # feeds reporting now (None: Redis not read)
    queue_depth: int | None = None
    oldest_batch_age_s: float | None = None
    workers_alive: int | None = None
    averages_age_s: dict[int, float | None] = field(default_factory=dict)  # window size -> newest window's end
    database_lag_s: float | None = None  # the freshest stored book's age
    checked_at: float = 0.0

    @property
    def state(self) -> str:
        return STATES[self.code]

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (`bookfeed status --json`): every field, plus `state`."""
        return {
            "state": self.state,
            **asdict(self),
            "averages_age_s": {str(k): v for k, v in self.averages_age_s.items()},
        }


def stale_after_s(settings: Settings, interval_ms: int | None = None) -> float:
    """A stream with no stored book for longer than this is stale: max(status_stale_s, 10 update intervals), the
    interval being `interval_ms` (the stream's, from its name) or BOOKFEED_SPEED's."""
    interval_ms = int(settings.speed.removesuffix("ms")) if interval_ms is None else interval_ms
    return max(settings.status_stale_s, 10 * interval_ms / 1000)


def ping_workers(settings: Settings, timeout_s: float = 1.0) -> int:
    """Celery workers of the broker and key prefix that consume the ingest queue and answer within `timeout_s` (a
    broadcast, as a ping, asking each node its queues): a node on the `maintenance` queue alone (docker-compose's
    retention worker) stores nothing, so it does not count."""
    app = broker_app(settings.require_redis_url(), key_prefix=settings.broker_key_prefix, name="bookfeed-status")
    try:
        replies = app.control.inspect(timeout=timeout_s).active_queues() or {}
        return sum(any(q.get("name") == INGEST_QUEUE for q in queues or ()) for queues in replies.values())
    finally:
        app.close()


@dataclass
class _Found:
    problems: list[tuple[int, str]] = field(default_factory=list)

    def add(self, code: int, problem: str) -> None:
        self.problems.append((code, problem))


def check_status(
    settings: Settings,
    *,
    engine: Engine,
    broker: redis.Redis,
    ping: Callable[[], int] | None = None,
    now: float | None = None,
) -> Status:
    """Check the feeds, the queues, the workers and the stored data; never raises for an unreachable service (that
    is a DOWN problem). `ping` counts live workers (default: ping_workers with a 1 s timeout)."""
    checked_at = time.time() if now is None else now
    found = _Found()
    out: dict[str, Any] = {"checked_at": checked_at}
    feed_symbols: dict[str, int] | None = None
    redis_ok = False
    try:
        stats = read_feed_stats(broker, settings.broker_key_prefix)
        stats = live_stats(stats, checked_at)
        queues = queue_state(broker, settings.broker_key_prefix)
    except (redis.RedisError, OSError) as exc:
        found.add(DOWN, f"Redis does not answer: {exc}")
    else:
        redis_ok = True
        out["feeds"] = len(stats)
        out["queue_depth"] = sum(queues.depth.values()) + queues.unacked
        out["oldest_batch_age_s"] = round(queues.oldest_age_s(int(checked_at * 1e9)), 3)
        feed_symbols = _feed_symbols(stats)
        _check_feeds(found, stats)
        if out["oldest_batch_age_s"] > settings.status_queue_age_s:
            found.add(DEGRADED, f"the oldest waiting batch is {out['oldest_batch_age_s']:.0f} s old")
    try:  # the ages are taken at the query, not before the ping below (which waits its whole timeout)
        _check_database(found, out, settings, engine, feed_symbols, now=time.time() if now is None else now)
    except SQLAlchemyError as exc:
        found.add(DOWN, f"PostgreSQL does not answer: {str(exc).splitlines()[0]}")
    if redis_ok:
        try:
            alive = (ping or (lambda: ping_workers(settings)))()
        except Exception as exc:  # any broker error: the workers cannot be told apart from dead ones
            found.add(DOWN, f"cannot ping the workers: {exc}")
        else:
            out["workers_alive"] = alive
            if not alive:
                found.add(DOWN, "no Celery worker of the ingest queue answers a ping")
    code = max((c for c, _ in found.problems), default=HEALTHY)
    return Status(code=code, problems=tuple(p for _, p in found.problems), stale_after_s=stale_after_s(settings), **out)


def _feed_symbols(stats: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """symbol -> the shortest update interval (ms) of its streams, over the feeds' streams with frames."""
    symbols: dict[str, int] = {}
    for s in stats:
        for stream in s.get("per_stream", {}):
            try:
                name = parse_stream_name(stream)
            except InvalidBookError:
                continue
            symbols[name.symbol] = min(symbols.get(name.symbol, name.interval_ms), name.interval_ms)
    return symbols


def _check_feeds(found: _Found, stats: Sequence[Mapping[str, Any]]) -> None:
    for problem in feed_problems(stats):
        found.add(DEGRADED, problem)


def _check_database(
    found: _Found,
    out: dict[str, Any],
    settings: Settings,
    engine: Engine,
    feed_symbols: dict[str, int] | None,
    *,
    now: float,
) -> None:
    key = {"exchange": EXCHANGE, "now": now}
    with engine.connect() as conn:
        intervals: dict[str, int | None] = dict(feed_symbols or {})
        if not intervals:  # no feed reports: check what was stored lately
            since = {"exchange": EXCHANGE, "since": now - RECENT_SYMBOLS_S}
            intervals = {r[0]: None for r in conn.execute(_RECENT_SYMBOLS, since)}
        names = sorted(intervals)
        rows = conn.execute(_LATEST, {**key, "symbols": names, "rate_s": RATE_WINDOW_S}).all()
        gaps: dict[str, int] = {str(sym): int(n) for sym, n in conn.execute(_GAPS, key)}
        averages = conn.execute(_AVERAGES, {**key, "symbols": names, "windows": list(WINDOWS_S)}).all()
    result = []
    for symbol, age, _first_age, recent in rows:
        age_s = None if age is None else max(0.0, round(float(age), 3))
        after_s = stale_after_s(settings, intervals.get(symbol))
        stale = age_s is None or age_s > after_s
        rate = round(int(recent) / RATE_WINDOW_S, 2)
        result.append(SymbolStatus(symbol, age_s, rate, int(gaps.get(symbol, 0)), stale, after_s))
    out["symbols"] = tuple(result)
    out["averages_age_s"] = {int(w): (None if a is None else round(float(a), 1)) for w, a in averages}
    ages = [s.last_book_age_s for s in result if s.last_book_age_s is not None]
    out["database_lag_s"] = min(ages) if ages else None
    if not names:
        found.add(DOWN, f"nothing stored in the last {RECENT_SYMBOLS_S:.0f} s and no feed reports")
        return
    stale_ones = [s for s in result if s.stale]
    if stale_ones:
        listed = ", ".join(
            f"{s.symbol} ({'nothing stored' if s.last_book_age_s is None else f'{s.last_book_age_s:.0f} s'})"
            for s in stale_ones[:_MAX_LISTED]
        )
        more = f" and {len(stale_ones) - _MAX_LISTED} more" if len(stale_ones) > _MAX_LISTED else ""
        found.add(DEGRADED, f"{len(stale_ones)} of {len(result)} symbols stale (no book stored lately): {listed}{more}")
    lag = out["database_lag_s"]
    if lag is None or lag > settings.status_down_s:
        found.add(DOWN, f"no book stored for over {settings.status_down_s:.0f} s")
    oldest_book = max((float(f) for _, _, f, _ in rows if f is not None), default=0.0)
    for w, age in out["averages_age_s"].items():
        if age is None and oldest_book > settings.averages_stale_s:
            found.add(DEGRADED, f"no {w} s average computed yet (is a worker consuming the metrics queue?)")
        elif age is not None and age > settings.averages_stale_s:
            found.add(DEGRADED, f"the newest {w} s average window ended {age:.0f} s ago")


def _age(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} s"


def format_status(status: Status) -> str:
    """The report as text: state and problems, a line per symbol, then the queues, workers and averages."""
    lines = [f"bookfeed status: {status.state}"]
    lines += [f"  ! {p}" for p in status.problems]
    if status.symbols:
        lines.append(f"  {'symbol':<14} {'last book':>10} {'frames/s':>9} {'gaps 1h':>8}")
        for s in status.symbols:
            mark = "  stale" if s.stale else ""
            lines.append(
                f"  {s.symbol:<14} {_age(s.last_book_age_s):>10} {s.frames_per_s:>9.1f} {s.gaps_last_hour:>8}{mark}"
            )
    averages = ", ".join(f"{w} s: {_age(a)}" for w, a in sorted(status.averages_age_s.items()))
    lines.append(
        f"  feeds {_opt(status.feeds)}  queue {_opt(status.queue_depth)}  oldest waiting batch "
        f"{_age(status.oldest_batch_age_s)}  workers alive {_opt(status.workers_alive)}"
    )
    lines.append(f"  newest average window ended {averages or '-'} ago  database lag {_age(status.database_lag_s)}")
    return "\n".join(lines)


def _opt(v: int | None) -> str:
    return "?" if v is None else str(v)
