"""Recording a websocket source to a file, and replaying a recording to each new connection.

File format (gzip JSON lines): a first line ``{"meta": {"format": "bookfeed-recording/1", "url": ...}}``, then one
line per frame, ``{"t": <receive time, ns since the epoch>, "frame": "<text exactly as received>"}``.

Replay starts from the beginning for each connection, at the original pace, ``speed`` times it, or flat out. A
combined client gets the recorded text of the streams it asked for byte for byte; a raw client gets the ``data``
part, cut out of the recorded text when it has Binance's layout.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import orjson
import websocket

from models.errors import ConfigError
from simulator.faults import FaultState
from simulator.protocol import parse_ws_path
from simulator.session import ServerConfig, Session, Stats

logger = logging.getLogger(__name__)

FORMAT = "bookfeed-recording/1"
_BATCH = 64


class RecordingError(ConfigError):
    """A recording file is missing, unreadable or not in the recording format."""


@dataclass(frozen=True, slots=True)
class RecordedFrame:
    """One received text frame and its receive time (ns since the epoch)."""

    t_ns: int
    frame: str


@dataclass(frozen=True, slots=True)
class Recording:
    """A whole recording: the URL it came from (if known) and its frames in receive order."""

    url: str | None
    frames: tuple[RecordedFrame, ...]


class RecordingWriter:
    """Writes a recording file; use as a context manager so the gzip trailer is always written."""

    def __init__(self, path: Path, *, url: str | None) -> None:
        self._file = gzip.GzipFile(path, "wb", compresslevel=5)
        self._file.write(orjson.dumps({"meta": {"format": FORMAT, "url": url}}) + b"\n")
        self.count = 0

    def write(self, t_ns: int, frame: str) -> None:
        """Append one frame received at ``t_ns``."""
        self._file.write(orjson.dumps({"t": t_ns, "frame": frame}) + b"\n")
        self.count += 1

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_recording(path: Path) -> Recording:
    """Load a recording; raises ``RecordingError`` for a missing file or a line that is not the format."""
    url: str | None = None
    frames: list[RecordedFrame] = []
    try:
        with gzip.open(path, "rb") as file:
            for number, line in enumerate(file, start=1):
                doc = orjson.loads(line)
                if isinstance(doc, dict) and "meta" in doc:
                    url = doc["meta"].get("url")
                elif isinstance(doc, dict) and isinstance(doc.get("t"), int) and isinstance(doc.get("frame"), str):
                    frames.append(RecordedFrame(doc["t"], doc["frame"]))
                else:
                    raise RecordingError(f"{path}:{number}: not a recording line")
    except (OSError, EOFError, orjson.JSONDecodeError) as exc:
        raise RecordingError(f"cannot read recording {path}: {exc}") from exc
    return Recording(url, tuple(frames))


def record(
    url: str,
    out: Path,
    *,
    duration_s: float | None = None,
    max_frames: int | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], int] = time.time_ns,
) -> int:
    """Record text frames from ``url`` into ``out`` until the duration, the frame count, ``stop`` or a close.

    Returns the number of frames written. Pings are answered by websocket-client; UTF-8 validation is
    skipped (frames are stored as received). Raises ``OSError`` or ``websocket.WebSocketException`` when the
    source cannot be reached.
    """
    deadline = None if duration_s is None else time.monotonic() + duration_s
    ws = websocket.create_connection(url, skip_utf8_validation=True, timeout=10)
    logger.info("recording %s into %s", url, out)
    try:
        with RecordingWriter(out, url=url) as writer:
            while max_frames is None or writer.count < max_frames:
                if (stop is not None and stop.is_set()) or (deadline is not None and time.monotonic() >= deadline):
                    break
                remaining = 0.5 if deadline is None else max(0.001, min(0.5, deadline - time.monotonic()))
                ws.settimeout(remaining)
                try:
                    opcode, data = ws.recv_data()
                except websocket.WebSocketTimeoutException:
                    continue
                except websocket.WebSocketConnectionClosedException:
                    logger.warning("recording source closed the connection: %s", url)
                    break
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    writer.write(clock(), data.decode("utf-8", errors="replace"))
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
            count = writer.count
    finally:
        ws.close()
    logger.info("recorded %d frames from %s", count, url)
    return count


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """Replayer settings: the recording, the pace (``speed`` times the original, or ``fast``) and the rules."""

    path: Path
    speed: float = 1.0
    fast: bool = False
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ConfigError(f"speed must be positive, got {self.speed}")


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
