"""Recording files (gzip JSON lines) and the recorder that fills them from a websocket URL.

Format: a first line ``{"meta": {"format": "bookfeed-recording/1", "url": ...}}``, then one line per frame,
``{"t": <receive time, ns since the epoch>, "frame": "<text exactly as received>"}``.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import orjson
import websocket

logger = logging.getLogger(__name__)

FORMAT = "bookfeed-recording/1"


class RecordingError(ValueError):
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
    skipped (frames are stored as received).
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
