"""The one home of what the feed reads in a frame's text: its stream name and lastUpdateId by string search (`peek`),
control messages, and the rule telling a server's id reset from a stale frame. Pure: no I/O, no state."""

from __future__ import annotations

import re

import orjson

__all__ = ["control_event", "is_reset", "is_whole_frame", "peek"]

_MAX_STREAM_NAME = 100  # Binance's names are ~30 characters; a longer one is not ours and is never stored
_MAX_LAST_UPDATE_ID = 2**63 - 1  # the worker's (and PostgreSQL bigint's) range
_RESET_JUMP = 1_000_000  # ids this far back are a server reset, not a stale frame...
_RESET_MIN_JUMP = 1_000  # ...and so are ids at most half the last one and more than this far back (see is_reset)


# The stream name: up to the first quote, within 100 characters.
_STREAM = r'\{"stream":"([^"]{0,' + str(_MAX_STREAM_NAME) + '})"'
# The id after the first "lastUpdateId": 1 to 19 ASCII digits (not \d: "²" and "٩" are digits too), then , or }.
_ID = "[0-9]{1,19}(?=[,}])"
_STREAM_RE, _ID_RE = re.compile(_STREAM), re.compile(_ID)
_BINANCE_RE = re.compile(_STREAM + r',"data":\{"lastUpdateId":(' + _ID + ")")  # both at once, as Binance writes them


def peek(raw: str) -> tuple[str | None, int | None]:
    """(stream, lastUpdateId) of a combined partial-depth frame by string search, without parsing the levels.
    A stream name over 100 characters reads as no stream; an id outside [0, 2**63) as no id."""
    m = _BINANCE_RE.match(raw)
    if m is not None:
        stream, digits = m.group(1, 2)
    else:
        m = _STREAM_RE.match(raw)
        if m is None:
            return None, None
        stream = m.group(1)
        i = raw.find('"lastUpdateId":', m.end(1))
        d = _ID_RE.match(raw, i + 15) if i >= 0 else None
        if d is None:
            return stream, None
        digits = d.group()
    luid = int(digits)
    return stream, (luid if luid <= _MAX_LAST_UPDATE_ID else None)


def is_reset(last: int, luid: int) -> bool:
    """Whether an id at or below the stream's last forwarded one means the server restarted its ids (rather than a
    stale or repeated frame, e.g. a server a few updates behind after a reconnect): far below it, or at most half of
    it and well below. The same rule holds at any time, so a bogus jump forward (900000 after 1000) is undone by
    the next real id (1001 is a reset); a small bogus jump only hides the updates up to it, and the stall check
    reports that silence as a gap."""
    back = last - luid
    return back > _RESET_JUMP or (luid <= last // 2 and back > _RESET_MIN_JUMP)


def is_whole_frame(raw: str, luid: int) -> bool:
    """True when `raw` really is a partial-depth frame with this lastUpdateId. Only frames about to be dropped as
    stale are parsed in full, so a truncated or otherwise broken frame is never dropped in silence."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    data = msg.get("data") if isinstance(msg, dict) else None
    return isinstance(data, dict) and type(data.get("lastUpdateId")) is int and data["lastUpdateId"] == luid


def control_event(raw: str) -> str | None:
    """'serverShutdown', 'reply' (a SUBSCRIBE answer) or None (data to forward; the worker judges it)."""
    if len(raw) > 4096:
        return None
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(msg, dict):
        if msg.get("e") == "serverShutdown":
            return "serverShutdown"
        if "id" in msg and ("result" in msg or "error" in msg):
            return "reply"
    return None
