"""Replays a recording to each new connection from the start: original pace, ``speed`` times it, or flat out.

A combined client gets the recorded text of the streams it asked for byte for byte; a raw client gets the
``data`` part, cut out of the recorded text when it has Binance's layout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from feed.sim._record import Recording
from feed.sim._runtime import FaultState, Stats
from feed.sim._server import Session
from feed.sim._streams import parse_ws_path

_BATCH = 64


@dataclass(frozen=True, slots=True)
class ReplayItem:
    """One replayable data frame; ``stream`` None means the stream is unknown (sent to every client)."""

    offset_s: float
    stream: str | None
    combined: bytes
    raw: bytes


def _single_stream(url: str | None) -> str | None:
    """The stream of a raw ``/ws/<stream>`` recording URL, else None."""
    if not url:
        return None
    parts = urlsplit(url)
    ws_path = parse_ws_path(f"{parts.path}?{parts.query}")
    if ws_path is not None and not ws_path.combined and len(ws_path.streams) == 1:
        return ws_path.streams[0]
    return None


def _item(offset_s: float, text: str, single: str | None) -> ReplayItem | None:
    data = text.encode()
    if not data.startswith(b'{"stream":'):
        if data.startswith(b'{"result"') or data.startswith(b'{"error"') or b'"serverShutdown"' in data[:40]:
            return None  # replies and events are not stream data
        combined = b'{"stream":"%b","data":%b}' % (single.encode(), data) if single else data
        return ReplayItem(offset_s, single, combined, data)
    try:
        doc = orjson.loads(data)
        stream = str(doc["stream"])
        payload = doc["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ReplayItem(offset_s, None, data, data)
    prefix = b'{"stream":"%b","data":' % stream.encode()
    raw = data[len(prefix) : -1] if data.startswith(prefix) and data.endswith(b"}") else orjson.dumps(payload)
    return ReplayItem(offset_s, stream, data, raw)


def replay_items(recording: Recording) -> list[ReplayItem]:
    """Turn a recording into replayable frames with offsets (seconds) from its first frame."""
    if not recording.frames:
        return []
    single = _single_stream(recording.url)
    first = recording.frames[0].t_ns
    items = (_item((f.t_ns - first) / 1e9, f.frame, single) for f in recording.frames)
    return [item for item in items if item is not None]


def recorded_symbols(items: Sequence[ReplayItem]) -> list[str]:
    """Upper-case symbols of the recorded streams, in order of appearance."""
    names = dict.fromkeys(item.stream.split("@", 1)[0].upper() for item in items if item.stream)
    return list(names)


class ReplayFeeder:
    """Feeds each session the recorded frames of its streams, then stays silent (the socket stays open)."""

    def __init__(
        self, items: Sequence[ReplayItem], *, speed: float, fast: bool, faults: FaultState, stats: Stats
    ) -> None:
        self._items = list(items)
        self._speed = speed
        self._fast = fast
        self._faults = faults
        self._stats = stats

    def _frames(self, session: Session, items: Sequence[ReplayItem], now: float) -> list[bytes]:
        wanted, combined, frames = set(session.streams), session.combined, []
        for item in items:
            if item.stream is not None and item.stream not in wanted:
                continue
            name = item.stream or "?"
            if self._faults.stalls and self._faults.is_stalled(name, now):
                continue
            self._stats.frames[name] += 1
            frames.append(item.combined if combined else item.raw)
        return frames

    async def run(self, session: Session) -> None:
        """Send the recording once, paced by the recorded receive times (unless ``fast``)."""
        loop = asyncio.get_running_loop()
        start, index, items = loop.time(), 0, self._items
        while session.writer.is_open and index < len(items):
            now = loop.time()
            if self._fast:
                end = min(index + _BATCH, len(items))
            else:
                elapsed = (now - start) * self._speed
                end = index
                while end < len(items) and items[end].offset_s <= elapsed:
                    end += 1
            session.emit(self._frames(session, items[index:end], now))
            index = end
            await session.writer.drain()
            if self._fast or index >= len(items):
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(items[index].offset_s / self._speed - (loop.time() - start))
