"""The live view of `bookfeed up`: one line per stream every few seconds, and a closing summary.

It reads what a user of the database may read, the public views (order_books, book_metrics, price_averages,
rejected_messages, feed_gaps), plus the feeds' own stats in Redis; never the tables behind the views. The exchange and
the window sizes come from models.vocabulary. `format_*` functions return strings; `LiveView` only prints them."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import redis
from sqlalchemy import Connection, Engine, text

from feed.service import read_feed_stats
from models.errors import InvalidBookError
from models.vocabulary import EXCHANGE, WINDOWS_S, parse_stream_name
from stack.harness import pending_tasks

__all__ = ["LiveView", "format_line", "window_label"]

_LAST_BOOK = text(
    "SELECT price, spread FROM book_metrics WHERE exchange = :exchange AND symbol = :symbol "
    "ORDER BY received_at DESC LIMIT 1"
)
_LAST_AVERAGE = text(
    "SELECT avg_price FROM price_averages WHERE exchange = :exchange AND symbol = :symbol "
    "AND window_seconds = :window ORDER BY window_start DESC LIMIT 1"
)
_COUNTS = text(
    "SELECT (SELECT count(*) FROM order_books), (SELECT count(*) FROM rejected_messages), "
    "(SELECT count(*) FROM feed_gaps)"
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
    symbol: str, rate: float, price: Any, spread: Any, averages: dict[int, Any], queue: int, windows: Sequence[int]
) -> str:
    cols = "  ".join(f"{window_label(w)} {_num(averages.get(w)):>14}" for w in windows)
    return (
        f"{symbol:<12} {rate:8.1f} frames/s  price {_num(price):>14}  spread {_num(spread):>12}  {cols}  queue {queue}"
    )


@dataclass
class LiveView:
    engine: Engine
    broker: redis.Redis
    key_prefix: str
    out: Callable[[str], None] = print
    windows: tuple[int, ...] = WINDOWS_S
    _prev: dict[str, tuple[float, int]] = field(default_factory=dict)

    def tick(self) -> None:
        """Print the header line and one line per stream the feeds report."""
        stats = read_feed_stats(self.broker, self.key_prefix)
        per_stream: dict[str, int] = {}
        for s in stats:
            for k, v in s.get("per_stream", {}).items():
                per_stream[k] = per_stream.get(k, 0) + int(v)
        queue = pending_tasks(self.broker, self.key_prefix)
        now = time.monotonic()
        lines = []
        with self.engine.connect() as conn:
            for stream in sorted(per_stream):
                try:
                    symbol = parse_stream_name(stream).symbol
                except InvalidBookError:
                    continue  # "?" and any stream that is not a partial book
                t0, n0 = self._prev.get(stream, (now, per_stream[stream]))
                rate = (per_stream[stream] - n0) / (now - t0) if now > t0 else 0.0
                self._prev[stream] = (now, per_stream[stream])
                price, spread, averages = self._latest(conn, symbol)
                lines.append(format_line(symbol, rate, price, spread, averages, queue, self.windows))
        dropped = sum(int(s.get("dropped_frames", 0)) for s in stats)
        dup = sum(int(s.get("duplicates", 0)) for s in stats)
        self.out(
            time.strftime("%H:%M:%S") + f"  feeds {len(stats)}  duplicates dropped {dup}  buffer-dropped {dropped}"
        )
        for line in lines:
            self.out("  " + line)

    def _latest(self, conn: Connection, symbol: str) -> tuple[Any, Any, dict[int, Any]]:
        key = {"exchange": EXCHANGE, "symbol": symbol}
        last = conn.execute(_LAST_BOOK, key).first()
        averages = {w: conn.execute(_LAST_AVERAGE, {**key, "window": w}).scalar() for w in self.windows}
        return (last[0], last[1], averages) if last else (None, None, averages)

    def summary(self) -> None:
        with self.engine.connect() as conn:
            books, rejected, gaps = conn.execute(_COUNTS).one()
            rows = conn.execute(_LATEST_AVERAGES, {"exchange": EXCHANGE}).all()
        self.out(f"stored books: {books}, rejected messages: {rejected}, feed gaps: {gaps}")
        self.out("latest rows of price_averages:")
        self.out(
            f"  {'symbol':<12} {'window':>6}  {'window_start (UTC)':<20} {'avg_price':>16} {'samples':>8} complete"
        )
        for symbol, w, start, avg, samples, complete in rows:
            self.out(f"  {symbol:<12} {w:>5}s  {start:%Y-%m-%d %H:%M:%S} {avg:>16.8f} {samples:>8} {complete}")
