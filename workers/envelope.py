"""Read a batch payload: validate its envelope field by field, parse each frame, and list the rows a refused batch
leaves in rejected_frames. Pure apart from the clock (received times of items that carry none) and log warnings."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from models.book import BookSnapshot, parse_frame
from models.columnar import Columns, parse_columns
from models.errors import InvalidBookError
from models.messages import PAYLOAD_VERSION
from models.metrics import BookMetrics, book_metrics
from models.vocabulary import EXCHANGES, parse_stream_name
from workers.storage import GapRow, Rejected

__all__ = ["UNKNOWN_EXCHANGE", "ParsedBatch", "RefusedBatch", "batch_key", "excerpt", "parse_batch", "refused_rows"]

logger = logging.getLogger(__name__)

# Receive times are written with four-digit years (workers.storage.ns_to_timestamp): [1970-01-01, 10000-01-01).
_MAX_NS = 253_402_300_800 * 1_000_000_000
_NS_RANGE = "an integer of ns in [1970, 10000)"
_MAX_BATCH_ID = 128
_REASON_CHARS = 500
_EXCERPT_CHARS = 65536
# The exchange recorded for the frames of a batch that names no known exchange: no venue's name is forged.
UNKNOWN_EXCHANGE = "unknown"


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    batch_id: str
    exchange: str
    books: list[tuple[BookSnapshot, BookMetrics]]  # what the per-frame path parsed
    raws: list[str]  # the frame text of each of `books`, for the rare book PostgreSQL refuses
    rejected: list[Rejected]
    gaps: list[GapRow] = field(default_factory=list)
    columns: Columns | None = None  # what the batch fast path took (models.columnar), besides `books`

    @property
    def n_books(self) -> int:
        return len(self.books) + (len(self.columns) if self.columns is not None else 0)

    def received_ns(self) -> list[int]:
        """The receive time of every book, both paths'."""
        ns = [b.received_ns for b, _ in self.books]
        if self.columns is not None:
            ns.extend(self.columns.received_ns.tolist())
        return ns


@dataclass(frozen=True, slots=True)
class RefusedBatch:
    """What a batch that will not be stored leaves behind: its frames as rejected rows, unparsed."""

    batch_id: str
    exchange: str
    reason: str  # the reason given, cut to a storable length
    rows: list[Rejected]


def parse_batch(payload: Any, *, fast: bool = True) -> ParsedBatch:
    """Validate the batch envelope field by field, then each frame.

    A frame item that is not ``[received_ns, raw text]`` with ``received_ns`` an int in [1970, 10000), or whose text
    fails `parse_frame`, becomes a Rejected row with its reason; so does each entry of the feed's ``rejected`` list.
    A missing or unusable ``batch_id`` (not a string, empty, over 128 characters, not printable) is replaced by one
    derived from the payload, so a redelivery is still recognised. Raises InvalidBookError only when the payload is
    not a version-1 batch object or names an exchange outside models.messages.EXCHANGES: that batch is refused whole
    (its frames are recorded by `workers.ingest.reject_batch`), since storing its books would forge another venue's
    data. `fast` lets models.columnar take the frames it can (the same books, metrics and encoding, in columns);
    without it every frame goes through models.book.parse_frame, one by one.
    """
    if not isinstance(payload, dict) or type(payload.get("v")) is not int or payload["v"] != PAYLOAD_VERSION:
        raise InvalidBookError(f"batch payload is not version {PAYLOAD_VERSION} of models.messages.Batch")
    exchange = payload.get("exchange")
    if not isinstance(exchange, str) or exchange not in EXCHANGES:
        raise InvalidBookError(f"unknown exchange {_shown(exchange, 40)}")
    batch_id, now = _batch_id(payload), time.time_ns()
    books: list[tuple[BookSnapshot, BookMetrics]] = []
    raws: list[str] = []
    rejected: list[Rejected] = []
    valid: list[tuple[int, str]] = []
    for item in _items(payload, "frames", rejected, now):
        if not (type(item) is list and len(item) == 2):
            rejected.append(Rejected(now, "batch item is not [received_ns, raw text]", excerpt(item)))
            continue
        received_ns, raw = item
        if not isinstance(raw, str):
            reason = f"raw frame is {type(raw).__name__}, not text"
            rejected.append(Rejected(received_ns if _valid_ns(received_ns) else now, reason, excerpt(raw)))
        elif not _valid_ns(received_ns):
            rejected.append(Rejected(now, f"received_ns {_shown(received_ns, 40)} is not {_NS_RANGE}", raw))
        else:
            valid.append((received_ns, raw))
    columns, one_by_one = _fast(valid, batch_id) if fast and valid else (None, range(len(valid)))
    for received_ns, raw in (valid[i] for i in one_by_one):
        try:
            book = parse_frame(raw, received_ns=received_ns)
        except InvalidBookError as exc:
            rejected.append(Rejected(received_ns, exc.reason, raw))
            continue
        books.append((book, book_metrics(book)))
        raws.append(raw)
    rejected.extend(_feed_rejected(_items(payload, "rejected", rejected, now), now))
    gaps = _parse_gaps(payload.get("gaps", []), batch_id)
    return ParsedBatch(
        batch_id=batch_id,
        exchange=exchange,
        books=books,
        raws=raws,
        rejected=rejected,
        gaps=gaps,
        columns=columns if columns is not None and len(columns) else None,
    )


def _fast(frames: list[tuple[int, str]], batch_id: str) -> tuple[Columns | None, Sequence[int]]:
    """models.columnar's split of the frames; should it ever fail, every frame goes to the per-frame path (the
    reference), so a defect there costs CPU, never a batch."""
    try:
        return parse_columns(frames)
    except Exception:
        logger.exception("batch %s: the batch fast path failed; parsing its frames one by one", batch_id)
        return None, range(len(frames))


def refused_rows(payload: Any, *, reason: str) -> RefusedBatch:
    """The rows recording a batch that will not be stored, each with `reason` (the feed's own refusals keep theirs).
    Never raises, whatever the payload: a frame item that is not ``[received_ns, text]`` becomes its JSON text; a
    payload that is not a batch object, or holds nothing to record, one row of its JSON text."""
    now, reason = time.time_ns(), excerpt(reason, _REASON_CHARS)
    rows: list[Rejected] = []
    if isinstance(payload, dict):
        batch_id = _batch_id(payload)
        exchange = payload["exchange"] if _known_exchange(payload.get("exchange")) else UNKNOWN_EXCHANGE
        notes: list[Rejected] = []  # a 'frames' or 'rejected' that is not a list, recorded whole
        for f in _items(payload, "frames", notes, now):
            ok = type(f) is list and len(f) == 2 and _valid_ns(f[0]) and isinstance(f[1], str)
            rows.append(Rejected(f[0], reason, f[1]) if ok else Rejected(now, reason, excerpt(f)))
        rows.extend(_feed_rejected(_items(payload, "rejected", notes, now), now))
        rows.extend(Rejected(n.received_ns, f"{reason} ({n.reason})", n.raw) for n in notes)
    else:
        batch_id, exchange = batch_key(payload), UNKNOWN_EXCHANGE
    return RefusedBatch(batch_id, exchange, reason, rows or [Rejected(now, reason, excerpt(payload))])


def _items(payload: dict[Any, Any], key: str, rejected: list[Rejected], now: int) -> list[Any]:
    """payload[key] when it is a list; anything else present is recorded as one rejected item."""
    value = payload.get(key)
    if value is None or isinstance(value, list):
        return value or []
    rejected.append(Rejected(now, f"batch {key!r} is not a list", excerpt(value)))
    return []


def _feed_rejected(items: list[Any], now: int) -> list[Rejected]:
    """The feed's own refusals, [received_ns, reason, excerpt] each, as Rejected rows."""
    out: list[Rejected] = []
    for item in items:
        if type(item) is list and len(item) == 3 and _valid_ns(item[0]) and isinstance(item[1], str):
            text = item[2] if isinstance(item[2], str) else excerpt(item[2])
            out.append(Rejected(item[0], item[1][:_REASON_CHARS] or "refused by the feed", text))
        else:
            out.append(Rejected(now, "feed rejection is not [received_ns, reason, excerpt]", excerpt(item)))
    return out


def _parse_gaps(items: Any, batch_id: str) -> list[GapRow]:
    """Feed gaps of the batch; a malformed one (a foreign producer) is logged and skipped, never fatal."""
    gaps: list[GapRow] = []
    for item in items if isinstance(items, list) else [items]:
        try:
            stream, start_ns, end_ns, reason = item
            if not (_valid_ns(start_ns) and _valid_ns(end_ns) and start_ns <= end_ns):
                raise ValueError(f"interval is not two times {_NS_RANGE} in order")
            if not isinstance(reason, str):
                raise TypeError("reason is not text")
            gaps.append(GapRow(parse_stream_name(stream).symbol, stream, start_ns, end_ns, reason[:_REASON_CHARS]))
        except (TypeError, ValueError, InvalidBookError) as exc:
            logger.warning("batch %s: ignoring malformed gap %s (%s)", batch_id, _shown(item, 200), exc)
    return gaps


def _valid_ns(ns: Any) -> bool:
    return type(ns) is int and 0 <= ns < _MAX_NS


def _known_exchange(exchange: Any) -> bool:
    return isinstance(exchange, str) and exchange in EXCHANGES


def batch_key(payload: Any) -> str:
    """The id a batch is stored under: its ``batch_id`` when that is printable text of 1 to 128 characters, else
    "derived-<sha256 of the payload>" (stable across redeliveries). Safe as a database value or Redis key."""
    given = payload.get("batch_id") if isinstance(payload, dict) else None
    if isinstance(given, str) and 0 < len(given) <= _MAX_BATCH_ID and given.isprintable():
        return given
    return "derived-" + hashlib.sha256(_canonical(payload)).hexdigest()


def _batch_id(payload: dict[Any, Any]) -> str:
    key = batch_key(payload)
    if key is not payload.get("batch_id"):
        logger.warning("batch id %s is unusable; the batch is stored as %s", _shown(payload.get("batch_id"), 80), key)
    return key


def _canonical(payload: Any) -> bytes:
    try:
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=repr)
    except Exception:  # not JSON at all (see excerpt): its repr, or its type, still names it
        text = excerpt(payload, None)
    return text.encode("utf-8", "backslashreplace")


def excerpt(value: Any, limit: int | None = _EXCERPT_CHARS) -> str:
    """`value` as text for a rejected row: a string as is, anything else as JSON (repr where JSON fails), cut at
    `limit` characters. Never raises: it serves the last resort, `workers.ingest.reject_batch`."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=repr)
        except Exception:  # any object at all may reach the last resort; its text is all that is wanted
            try:
                text = repr(value)
            except Exception:
                text = f"<unprintable {type(value).__name__}>"
    return text if limit is None else text[:limit]


def _shown(value: Any, limit: int) -> str:
    """`value` quoted for a reason: repr of a string, JSON of anything else, at most about `limit` characters."""
    return repr(value[:limit]) if isinstance(value, str) else excerpt(value, limit)
