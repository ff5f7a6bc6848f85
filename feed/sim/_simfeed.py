"""Simulated market data for sessions: per-stream cadence (1000/100 ms) or a fixed rate per connection.

Books are shared by all connections, so clients see the same ``lastUpdateId`` for the same book, and
``lastUpdateId`` keeps increasing across reconnects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from feed.sim._faults import choose_fault, faulty_payload
from feed.sim._market import SymbolBook
from feed.sim._runtime import FaultState, Stats
from feed.sim._server import Session
from feed.sim._streams import parse_stream
from feed.sim._symbols import SymbolSpec

logger = logging.getLogger(__name__)

_BATCH = 64
# With per-stream cadence a book moves at most every 50 ms, so a depth5 and a depth20 stream of the same
# symbol sent in the same tick (or two clients) carry the same book.
_MIN_BOOK_AGE_S = 0.05


class Market:
    """The books of all simulated symbols, created on first use."""

    def __init__(self, specs: Sequence[SymbolSpec], *, seed: int) -> None:
        self.specs = {spec.symbol: spec for spec in specs}
        self._seed = seed
        self._books: dict[str, SymbolBook] = {}
        self._advanced_at: dict[str, float] = {}

    def book(self, symbol: str) -> SymbolBook:
        """Return the book of ``symbol`` (upper-case, must be in ``specs``)."""
        book = self._books.get(symbol)
        if book is None:
            book = self._books[symbol] = SymbolBook(self.specs[symbol], seed=self._seed)
        return book

    def refresh(self, book: SymbolBook, now: float) -> None:
        """Advance ``book`` one step unless it already moved within the last 50 ms (loop time ``now``)."""
        symbol = book.spec.symbol
        if now - self._advanced_at.get(symbol, -1.0) >= _MIN_BOOK_AGE_S:
            book.advance()
            self._advanced_at[symbol] = now


@dataclass(slots=True)
class _Sub:
    name: str
    book: SymbolBook
    depth: int
    interval_s: float
    prefix: bytes


class SimFeeder:
    """Feeds sessions from a ``Market``, applying the book faults (malformed, crossed, one-sided) and stalls."""

    def __init__(self, market: Market, *, faults: FaultState, stats: Stats, rate: float | None) -> None:
        self.market = market
        self._faults = faults
        self._stats = stats
        self._rate = rate

    async def run(self, session: Session) -> None:
        """Send frames for the session's servable streams until the connection closes."""
        if self._rate is None:
            await self._run_timed(session)
        else:
            await self._run_rate(session, self._rate)

    def _subs(self, names: Iterable[str], old: dict[str, _Sub]) -> dict[str, _Sub]:
        """Servable subscriptions; unknown names are acknowledged elsewhere and stay silent here."""
        subs: dict[str, _Sub] = {}
        for name in names:
            if name in old:
                subs[name] = old[name]
            elif (stream := parse_stream(name, self.market.specs)) is not None:
                prefix = b'{"stream":"%b","data":' % name.encode()
                book = self.market.book(stream.symbol)
                subs[name] = _Sub(name, book, stream.levels, stream.interval_ms / 1000.0, prefix)
        return subs

    def _frame(self, sub: _Sub, combined: bool) -> bytes:
        book, faults = sub.book, self._faults
        payload = None
        if faults.book_faults_on:
            kind = choose_fault(
                faults.rng.random(), malformed=faults.malformed, crossed=faults.crossed, one_sided=faults.one_sided
            )
            if kind is not None:
                payload, what = faulty_payload(kind, book, sub.depth, faults.rng)
                self._stats.faults[kind.value] += 1
                logger.warning(
                    "injected %s fault on %s: %s (lastUpdateId=%d)", kind.value, sub.name, what, book.last_update_id
                )
        if payload is None:
            payload = book.payload(sub.depth)
        self._stats.frames[sub.name] += 1
        return sub.prefix + payload + b"}" if combined else payload

    async def _run_timed(self, session: Session) -> None:
        loop = asyncio.get_running_loop()
        subs: dict[str, _Sub] = {}
        due: dict[str, float] = {}
        while session.writer.is_open:
            now = loop.time()
            if session.changed.is_set():
                session.changed.clear()
                subs = self._subs(session.streams, subs)
                due = {name: due.get(name, now) for name in subs}
            if not subs:
                await session.changed.wait()
                continue
            frames = []
            for name, when in due.items():
                if when > now:
                    continue
                sub = subs[name]
                following = when + sub.interval_s
                due[name] = following if following > now else now + sub.interval_s
                if self._faults.stalls and self._faults.is_stalled(name, now):
                    continue
                self.market.refresh(sub.book, now)
                frames.append(self._frame(sub, session.combined))
            session.emit(frames)
            await session.wait_changed(min(due.values()) - loop.time())

    async def _run_rate(self, session: Session, rate: float) -> None:
        loop = asyncio.get_running_loop()
        subs: dict[str, _Sub] = {}
        order: list[_Sub] = []
        start, sent, turn = loop.time(), 0, 0
        while session.writer.is_open:
            if session.changed.is_set():
                session.changed.clear()
                subs = self._subs(session.streams, subs)
                order = list(subs.values())
                start, sent, turn = loop.time(), 0, 0
            if not order:
                await session.changed.wait()
                continue
            now = loop.time()
            owed = int((now - start) * rate) - sent
            if owed <= 0:
                await session.wait_changed((sent + 1) / rate - (now - start))
                continue
            if owed > rate + _BATCH:  # over a second behind (slow client): forget the backlog
                sent += owed - _BATCH
                owed = _BATCH
            count = min(owed, _BATCH)
            frames = []
            for i in range(count):
                sub = order[(turn + i) % len(order)]
                if self._faults.stalls and self._faults.is_stalled(sub.name, now):
                    continue
                sub.book.advance()
                frames.append(self._frame(sub, session.combined))
            turn = (turn + count) % len(order)
            sent += count
            session.emit(frames)
            await session.writer.drain()
            if count == _BATCH:
                await asyncio.sleep(0)  # let reads, pings and other connections run
