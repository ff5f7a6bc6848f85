"""Query parameters of the API: RFC 3339 times, symbols, ranges, limits and the opaque keyset cursor. Pure: each
function returns a value or raises ProblemError (400) with what was wrong."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta

import orjson

from api.problems import ProblemError
from models.live import rfc3339
from models.vocabulary import normalise_symbol

__all__ = ["BookKey", "check_limit", "check_range", "decode_cursor", "encode_cursor", "parse_symbol", "parse_time"]

BookKey = tuple[datetime, int]  # (received_at, last_update_id): the order of books and the cursor's content

# RFC 3339 section 5.6 date-time: a full date, a time with seconds, an offset (Z or +hh:mm). Digits beyond the
# microsecond are accepted and dropped (PostgreSQL stores microseconds).
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,6})\d*)?([Zz]|[+-]\d{2}:\d{2})")


def _bad(detail: str) -> ProblemError:
    return ProblemError(400, "Invalid request", detail)


def parse_time(value: str, *, name: str) -> datetime:
    """An RFC 3339 date-time (`2026-11-30T06:00:00Z`, `...T07:00:00.5+01:00`) as an aware UTC datetime."""
    m = _RFC3339.fullmatch(value.strip())
    if m is None:
        raise _bad(f"{name}: {value[:40]!r} is not an RFC 3339 date-time such as 2026-11-30T06:00:00Z")
    date, time, frac, offset = m.groups()
    text = f"{date}T{time}" + (f".{frac.ljust(6, '0')}" if frac else "") + ("+00:00" if offset in "Zz" else offset)
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError as exc:
        raise _bad(f"{name}: {value[:40]!r} is not a valid date-time ({exc})") from None


def parse_symbol(value: str) -> str:
    """A symbol in any case, upper-cased (the vocabulary's)."""
    try:
        return normalise_symbol(value)
    except ValueError as exc:
        raise _bad(f"symbol: {exc}") from None


def check_range(start: datetime, end: datetime, *, max_range_s: float) -> None:
    """`start` before `end`, at most `max_range_s` apart."""
    if start >= end:
        raise _bad(f"start ({rfc3339(start)}) must be before end ({rfc3339(end)})")
    if end - start > timedelta(seconds=max_range_s):
        raise _bad(f"the range from start to end is longer than the maximum of {max_range_s:g} s")


def check_limit(limit: int, *, max_limit: int) -> int:
    if not 1 <= limit <= max_limit:
        raise _bad(f"limit must be between 1 and {max_limit}, got {limit}")
    return limit


def encode_cursor(key: BookKey) -> str:
    """Opaque to clients: base64url of the last item's (received_at, last_update_id)."""
    return base64.urlsafe_b64encode(orjson.dumps([rfc3339(key[0]), key[1]])).decode().rstrip("=")


def decode_cursor(cursor: str) -> BookKey:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, luid = orjson.loads(raw)
        if not isinstance(at, str) or not isinstance(luid, int) or isinstance(luid, bool):
            raise ValueError("not a key")
        return parse_time(at, name="cursor"), luid
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError, ProblemError):
        raise _bad("cursor: not a cursor this API returned") from None
