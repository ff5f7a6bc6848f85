"""Shared streams at their own cadence: one timer wheel for the whole server, each stream's frame built once per tick
and written to every session subscribed to it, one write per session per tick.

Every session of a stream gets the same bytes (same ``lastUpdateId``, same payload), so a client holding two
connections over the same streams (a rotation) sees identical frames and can drop one copy by ``lastUpdateId``.
Lives on the event loop thread only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass, field

from simulator.faults import FaultState, faulty_payload
from simulator.market import Market, SymbolBook
from simulator.protocol import frame, parse_stream
from simulator.session import Session, Stats

logger = logging.getLogger(__name__)

TICK_S = 0.1
"""The wheel's tick: the shortest cadence (100 ms). A 1000 ms stream fires on one tick in ten, its phase set when
it was first subscribed, so the streams of one second spread over its ten ticks."""
_SLOTS = 10


@dataclass(slots=True, eq=False)
class _Channel:
    name: str
    book: SymbolBook
    depth: int
    prefix: bytes
    slots: tuple[int, ...]
    subscribers: dict[Session, None] = field(default_factory=dict)  # an ordered set


class Broadcaster:
    """Serves the timed streams (1000 ms / 100 ms) of every session from one task, applying the book faults
    (malformed, crossed, one-sided; the same faulty frame goes to every subscriber) and stalls.

    Streams of symbols outside ``tradable`` (unknown or not TRADING) are acknowledged by the protocol and never
    sent, as Binance does.
    """

    def __init__(self, market: Market, *, faults: FaultState, stats: Stats, tradable: Collection[str]) -> None:
        self._market = market
        self._faults = faults
        self._stats = stats
        self._tradable = frozenset(tradable)
        self._channels: dict[str, _Channel] = {}
        self._wheel: list[dict[str, _Channel]] = [{} for _ in range(_SLOTS)]
        self._tick = 0
        self._task: asyncio.Task[None] | None = None

    async def run(self, session: Session) -> None:
        """Keep the session subscribed to the channels of its servable streams until it closes."""
        joined: dict[str, _Channel] = {}
        try:
            while session.writer.is_open:
                await session.changed.wait()
                session.changed.clear()
                wanted = set(session.streams)
                for name in [name for name in joined if name not in wanted]:
                    self._leave(joined.pop(name), session)
                for name in session.streams:
                    if name not in joined and (channel := self._join(name, session)) is not None:
                        joined[name] = channel
        finally:
            for channel in joined.values():
                self._leave(channel, session)

    def _join(self, name: str, session: Session) -> _Channel | None:
        channel = self._channels.get(name)
        if channel is None:
            stream = parse_stream(name, self._tradable)
            if stream is None:
                return None
            if self._task is None:
                self._tick = 0
                self._task = asyncio.create_task(self._turn())
            period = stream.interval_ms // round(TICK_S * 1000)
            first = (self._tick + 1) % _SLOTS
            slots = tuple(sorted((first + i) % _SLOTS for i in range(0, _SLOTS, period)))
            prefix = b'{"stream":"%b","data":' % name.encode()
            channel = _Channel(name, self._market.book(stream.symbol), stream.levels, prefix, slots)
            self._channels[name] = channel
            for slot in slots:
                self._wheel[slot][name] = channel
        channel.subscribers[session] = None
        return channel

    def _leave(self, channel: _Channel, session: Session) -> None:
        channel.subscribers.pop(session, None)
        if not channel.subscribers and self._channels.get(channel.name) is channel:
            del self._channels[channel.name]
            for slot in channel.slots:
                del self._wheel[slot][channel.name]

    async def _turn(self) -> None:
        """Fire one slot of the wheel per tick, on a fixed grid (no drift); after a stall of the loop longer than
        a tick, skip the missed ticks rather than sending them in a burst."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        ticks = 0
        try:
            while self._channels:
                ticks += 1
                delay = start + ticks * TICK_S - loop.time()
                if delay < -TICK_S:
                    ticks += int(-delay / TICK_S)
                    delay = start + ticks * TICK_S - loop.time()
                await asyncio.sleep(delay)
                self._tick = ticks % _SLOTS
                self._fire(self._wheel[self._tick], loop.time())
        finally:
            self._task = None

    def _fire(self, channels: dict[str, _Channel], now: float) -> None:
        outgoing: dict[Session, list[bytes] | None] = {}
        faults, frames_sent = self._faults, self._stats.frames
        skipped = 0
        for channel in channels.values():
            if faults.stalls and faults.is_stalled(channel.name, now):
                continue
            self._market.refresh(channel.book, now)
            payload = self._payload(channel)
            combined = raw = b""
            sent = 0
            for session in channel.subscribers:
                if session in outgoing:
                    parts = outgoing[session]
                else:
                    parts = outgoing[session] = [] if session.can_send() else None
                if parts is None:
                    skipped += session.writer.is_open  # a closing connection is no slow client
                    continue
                if session.combined:
                    combined = combined or frame(channel.prefix, payload, b"}")
                    parts.append(combined)
                else:
                    raw = raw or frame(payload)
                    parts.append(raw)
                sent += 1
            frames_sent[channel.name] += sent
        self._stats.frames_skipped += skipped
        for session, parts in outgoing.items():
            if parts:
                session.send_framed(b"".join(parts), len(parts))

    def _payload(self, channel: _Channel) -> bytes:
        faults = self._faults
        if faults.book_faults_on and (kind := faults.choose()) is not None:
            payload, what = faulty_payload(kind, channel.book, channel.depth, faults.rng)
            self._stats.faults[kind.value] += 1
            logger.warning(
                "injected %s fault on %s: %s (lastUpdateId=%d)",
                kind.value,
                channel.name,
                what,
                channel.book.last_update_id,
            )
            return payload
        return channel.book.payload(channel.depth)
