"""The live view of `bookfeed up`: every few seconds a header (feeds, streams, frames/s, queue), a warning line
whenever `bookfeed status` would not say healthy (stack/status.py, the same check), the state of the feeds'
connections (each one not live on a line of its own, with its last error), the busiest symbols, and a closing
summary. On a terminal the frame is redrawn in place (`redraw`), otherwise printed line by line.

It reads what a user of the database may read, the public views (order_books, book_metrics, price_averages,
rejected_messages, feed_gaps), plus the feeds' own stats in Redis; never the tables behind the views. A tick costs two
set-based queries whatever the number of symbols: only the symbols shown are looked up. The exchange and the window
sizes come from models.vocabulary. `format_*` functions return strings; `LiveView` only prints them."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import redis
from sqlalchemy import Connection, Engine, text

from feed.service import read_feed_stats
from models.errors import InvalidBookError
from models.vocabulary import EXCHANGE, WINDOWS_S, parse_stream_name
from stack.harness import pending_tasks
from stack.status import HEALTHY, Status

__all__ = [
    "MAX_CONNECTION_LINES",
    "MAX_SYMBOL_LINES",
    "LiveView",
    "format_connections",
    "format_line",
    "format_warning",
    "window_label",
]

MAX_SYMBOL_LINES = 20  # busiest first; the rest are counted on one line
MAX_CONNECTION_LINES = 10  # connections not live, each with its last error; the rest are counted
LIVE = "live"

# The latest book of each shown symbol: one index lookup per symbol (exchange, symbol, received_at).
_LATEST_BOOKS = text(
    "SELECT s.symbol, b.price, b.spread FROM (SELECT unnest(CAST(:symbols AS text[])) AS symbol) s "
    "LEFT JOIN LATERAL (SELECT price, spread FROM book_metrics m WHERE m.exchange = :exchange "
    "AND m.symbol = s.symbol ORDER BY m.received_at DESC LIMIT 1) b ON true"
)
# The latest average of each shown symbol and window size (the primary key's order).
_LATEST_AVERAGES_OF = text(
    "SELECT s.symbol, w.window_seconds, a.avg_price FROM (SELECT unnest(CAST(:symbols AS text[])) AS symbol) s "
    "CROSS JOIN (SELECT unnest(CAST(:windows AS integer[])) AS window_seconds) w "
    "CROSS JOIN LATERAL (SELECT avg_price FROM price_averages p WHERE p.exchange = :exchange "
    "AND p.symbol = s.symbol AND p.window_seconds = w.window_seconds ORDER BY p.window_start DESC LIMIT 1) a"
)
_COUNTS = text(
    "SELECT (SELECT count(*) FROM order_books), (SELECT count(DISTINCT symbol) FROM order_books), "
    "(SELECT count(*) FROM rejected_messages), (SELECT count(*) FROM feed_gaps)"
)
_LATEST_AVERAGES = text(
    "SELECT symbol, window_seconds, window_start, avg_price, samples, complete FROM ("
    "  SELECT *, row_number() OVER (PARTITION BY symbol, window_seconds ORDER BY window_start DESC) AS n"
    "  FROM price_averages WHERE exchange = :exchange) a "
    "WHERE n <= 2 ORDER BY symbol, window_seconds, window_start"
)


def window_label(window_s: int) -> str:
    """``avg30s``, ``avg1m``: the column name of a window size."""
    return f"avg{window_s // 60}m" if window_s % 60 == 0 else f"avg{window_s}s"


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float | Decimal):
        return f"{v:.8g}"
    return str(v)


def format_line(
    symbol: str, rate: float, price: Any, spread: Any, averages: Mapping[int, Any], windows: Sequence[int]
) -> str:
    """One symbol: frames/s, the latest price and spread, the latest average of each window size."""
    cols = "  ".join(f"{window_label(w)} {_num(averages.get(w)):>14}" for w in windows)
    return f"{symbol:<12} {rate:8.1f} frames/s  price {_num(price):>14}  spread {_num(spread):>12}  {cols}"


def format_connections(
    stats: Sequence[Mapping[str, Any]], *, now: float, limit: int = MAX_CONNECTION_LINES
) -> list[str]:
    """`connections 8 live, 1 backoff`, then one line per connection not live with how long it has been so and its
    last error (at most `limit`, then a count). Nothing when no feed reports connections (an older feed)."""
    conns = [(s, c) for s in stats for c in s.get("connections") or () if isinstance(c, Mapping)]
    if not conns:
        return []
    states = Counter(str(c.get("state", "?")) for _, c in conns)
    order = sorted(states, key=lambda st: (st != LIVE, st))
    lines = ["connections " + ", ".join(f"{states[st]} {st}" for st in order)]
    several = len(stats) > 1
    troubled = [(s, c) for s, c in conns if c.get("state") != LIVE]
    for s, c in troubled[:limit]:
        name = f"{str(s.get('feed_id', '?'))[:6]}/{c.get('id', '?')}" if several else str(c.get("id", "?"))
        since = c.get("since")
        for_s = f" for {max(0.0, now - float(since)):.0f} s" if isinstance(since, int | float) else ""
        error = c.get("last_error") or "no error yet"
        lines.append(f"connection {name} {c.get('state', '?')}{for_s} ({c.get('streams', '?')} streams): {error}")
    if len(troubled) > limit:
        lines.append(f"… {len(troubled) - limit} more connections not live")
    return lines


def format_warning(status: Status) -> str | None:
    """One line when the status is not healthy (`WARNING status degraded: ...; ...`), else None."""
    if status.code == HEALTHY:
        return None
    return f"WARNING status {status.state}: " + "; ".join(status.problems)


def _per_symbol(counts: Mapping[str, int]) -> dict[str, int]:
    """Frames per symbol from frames per stream ("?" and streams that are not partial books are left out)."""
    out: dict[str, int] = {}
    for stream, n in counts.items():
        try:
            symbol = parse_stream_name(stream).symbol
        except InvalidBookError:
            continue
        out[symbol] = out.get(symbol, 0) + n
    return out


@dataclass
class LiveView:
    engine: Engine
    broker: redis.Redis
    key_prefix: str
    out: Callable[[str], None] = print
    windows: tuple[int, ...] = WINDOWS_S
    max_symbols: int = MAX_SYMBOL_LINES
    status: Callable[[], Status] | None = None  # `bookfeed status`'s check, run every tick
    redraw: Callable[[Sequence[str]], None] | None = None  # shows a whole frame in place of the previous one
    _prev: dict[str, tuple[float, int]] = field(default_factory=dict)  # symbol -> (monotonic s, frames)
    _prev_frames: dict[str, tuple[float, int]] = field(default_factory=dict)  # feed id -> (monotonic s, frames)

    def tick(self) -> None:
        """Print the header, the connections, and a line per symbol for the busiest `max_symbols` symbols."""
        stats = read_feed_stats(self.broker, self.key_prefix)
        queue = pending_tasks(self.broker, self.key_prefix)
        now = time.monotonic()
        counts: dict[str, int] = {}
        for s in stats:
            for k, v in s.get("per_stream", {}).items():
                counts[k] = counts.get(k, 0) + int(v)
        per_symbol = _per_symbol(counts)
        rates = {sym: self._rate(self._prev, sym, n, now) for sym, n in per_symbol.items()}
        total = sum(self._rate(self._prev_frames, str(s.get("feed_id")), int(s.get("frames", 0)), now) for s in stats)
        shown = sorted(per_symbol, key=lambda sym: (-rates[sym], -per_symbol[sym], sym))[: self.max_symbols]
        subscribed = sum(int(s.get("streams_subscribed", 0)) for s in stats)
        dropped = sum(int(s.get("dropped_frames", 0)) for s in stats)
        dup = sum(int(s.get("duplicates", 0)) for s in stats)
        streams = f"streams {subscribed} subscribed  " if any("streams_subscribed" in s for s in stats) else ""
        lines = [
            time.strftime("%H:%M:%S")
            + f"  feeds {len(stats)}  {streams}{total:.1f} frames/s  queue {queue}"
            + f"  duplicates dropped {dup}  buffer-dropped {dropped}"
        ]
        warning = format_warning(self.status()) if self.status is not None else None
        if warning:
            lines.append("  " + warning)
        lines += ["  " + line for line in format_connections(stats, now=time.time())]
        for s in stats:  # a feed that cannot read its symbol list (`--symbols all`) says why
            if s.get("source_error"):
                lines.append(f"  feed {str(s.get('feed_id', '?'))[:6]}: {s['source_error']}")
        if shown:
            with self.engine.connect() as conn:
                latest = self._latest(conn, shown)
            for sym in shown:
                price, spread, averages = latest.get(sym, (None, None, {}))
                lines.append("  " + format_line(sym, rates[sym], price, spread, averages, self.windows))
            more = max(len(per_symbol), subscribed) - len(shown)
            if more > 0:
                lines.append(f"  … {more} more symbols")
        if self.redraw is not None:
            self.redraw(lines)
        else:
            for line in lines:
                self.out(line)

    @staticmethod
    def _rate(prev: dict[str, tuple[float, int]], key: str, n: int, now: float) -> float:
        t0, n0 = prev.get(key, (now, n))
        prev[key] = (now, n)
        return (n - n0) / (now - t0) if now > t0 else 0.0

    def _latest(self, conn: Connection, symbols: Iterable[str]) -> dict[str, tuple[Any, Any, dict[int, Any]]]:
        """symbol -> (latest price, latest spread, {window size: latest average}), in two queries."""
        key = {"exchange": EXCHANGE, "symbols": list(symbols)}
        out: dict[str, tuple[Any, Any, dict[int, Any]]] = {
            sym: (price, spread, {}) for sym, price, spread in conn.execute(_LATEST_BOOKS, key)
        }
        for sym, w, avg in conn.execute(_LATEST_AVERAGES_OF, {**key, "windows": list(self.windows)}):
            out.setdefault(sym, (None, None, {}))[2][int(w)] = avg
        return out

    def summary(self) -> None:
        """Stored books, symbols with books, rejected messages and gaps, then the latest averages of the first
        `max_symbols` symbols (by name)."""
        with self.engine.connect() as conn:
            books, symbols, rejected, gaps = conn.execute(_COUNTS).one()
            rows = conn.execute(_LATEST_AVERAGES, {"exchange": EXCHANGE}).all()
        self.out(
            f"stored books: {books}, symbols with books: {symbols}, rejected messages: {rejected}, feed gaps: {gaps}"
        )
        self.out("latest rows of price_averages:")
        self.out(
            f"  {'symbol':<12} {'window':>6}  {'window_start (UTC)':<20} {'avg_price':>16} {'samples':>8} complete"
        )
        listed = sorted({r[0] for r in rows})
        keep = set(listed[: self.max_symbols])
        for symbol, w, start, avg, samples, complete in rows:
            if symbol in keep:
                self.out(f"  {symbol:<12} {w:>5}s  {start:%Y-%m-%d %H:%M:%S} {avg:>16.8f} {samples:>8} {complete}")
        if len(listed) > len(keep):
            self.out(f"  … {len(listed) - len(keep)} more symbols with averages")
