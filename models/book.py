"""Order-book values and the parser of Binance partial-depth frames. Pure: no I/O, no clock, no logging.

A frame is the combined-stream text the websocket delivered, e.g. (tests/fixtures/binance_depth_samples.jsonl)::

    {"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":11719214114,
     "bids":[["40069.98000000","0.00002300"],...],"asks":[["40069.99000000","1.32492400"],...]}}
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from functools import cache
from typing import Any

import orjson

from models.errors import MalformedPayloadError
from models.vocabulary import MAX_FRAME_BYTES, StreamName, parse_stream_name

__all__ = ["BookSnapshot", "ParsedNumbers", "Side", "parse_frame"]

_MAX_LAST_UPDATE_ID = 2**63 - 1
# Plain decimal strings only: no sign, exponent, NaN or Infinity; at most 20 digits either side of the point.
_NUMBER = r"(?:0|[1-9][0-9]{0,19})(?:\.[0-9]{1,20})?"
_NUMBERS_RE = re.compile(rf"{_NUMBER}(?:\|{_NUMBER})*")
_MAX_DECIMALS = 20
_FRAME_KEYS = frozenset(("stream", "data"))
_DATA_KEYS = frozenset(("lastUpdateId", "bids", "asks"))
# A frame with exactly these keys holds one colon per key and no other (no value admitted can contain one), so
# a count above this means a repeated key, which orjson would otherwise resolve silently (last one wins).
_N_KEYS = len(_FRAME_KEYS) + len(_DATA_KEYS)


class Side(StrEnum):
    BID = "bid"
    ASK = "ask"


@dataclass(frozen=True, slots=True)
class ParsedNumbers:
    """What `parse_frame` learned about a book's values, so that metrics and storage do not learn it again: each
    value as a float (float(value), in the book's order) and the book's scale. `scale` is an int only when every
    value of the book is a plain decimal with exactly that many decimals (no point when 0) and no leading zero;
    None when the scales differ or the book has no level. `columns` are the very tuples these were derived from."""

    columns: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]
    bid_prices: tuple[float, ...]
    bid_quantities: tuple[float, ...]
    ask_prices: tuple[float, ...]
    ask_quantities: tuple[float, ...]
    scale: int | None


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """One partial order book exactly as sent: prices and quantities are the venue's decimal strings.

    `parsed` is set by `parse_frame` (None for a book built otherwise); it takes no part in equality. Read it through
    `numbers()`, which ignores it unless it belongs to this book's very level tuples (a `dataclasses.replace` of
    a level column leaves it behind)."""

    symbol: str
    depth: int
    last_update_id: int
    received_ns: int
    bid_prices: tuple[str, ...]
    bid_quantities: tuple[str, ...]
    ask_prices: tuple[str, ...]
    ask_quantities: tuple[str, ...]
    parsed: ParsedNumbers | None = field(default=None, compare=False, repr=False)

    def numbers(self) -> ParsedNumbers | None:
        """The floats and scale `parse_frame` found for this book's values, or None when they are not known."""
        p = self.parsed
        if p is None:
            return None
        bp, bq, ap, aq = p.columns
        if bp is self.bid_prices and bq is self.bid_quantities and ap is self.ask_prices and aq is self.ask_quantities:
            return p
        return None


def parse_frame(raw: str | bytes, *, received_ns: int) -> BookSnapshot:
    """Parse and validate one combined-stream partial-depth frame.

    Raises MalformedPayloadError (with a reason fit for ``rejected_messages``) when the text is over MAX_FRAME_BYTES
    (UTF-8 bytes), is not JSON, is not a combined-stream frame, names a stream other than ``<symbol>@depth<N>``,
    lacks, adds or repeats a field (in the wrapper or in ``data``), or has a level that is not a pair of plain
    positive decimal strings, more levels than the stream's depth, or levels that are not strictly ordered (bids
    descending, asks ascending; this also rules out duplicate prices).
    A crossed book (best bid >= best ask) is valid here: it is stored and flagged by the metrics.
    """
    _check_size(raw)
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayloadError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("stream"), str) or "data" not in msg:
        raise MalformedPayloadError("not a combined-stream frame: expected an object with 'stream' and 'data'")
    stream = parse_stream_name(msg["stream"])
    if msg.keys() != _FRAME_KEYS:
        extra = sorted(str(k)[:40] for k in msg.keys() - _FRAME_KEYS)
        raise MalformedPayloadError(f"unexpected fields {extra} beside 'stream' and 'data'", symbol=stream.symbol)
    data = msg["data"]
    if not isinstance(data, dict):
        raise MalformedPayloadError("'data' is not an object", symbol=stream.symbol)
    if data.keys() != _DATA_KEYS:
        missing = sorted(_DATA_KEYS - data.keys())
        extra = sorted(str(k)[:40] for k in data.keys() - _DATA_KEYS)
        raise MalformedPayloadError(
            f"fields differ from a partial-depth payload: missing {missing}, unexpected {extra}", symbol=stream.symbol
        )
    luid = data["lastUpdateId"]
    if type(luid) is not int or not 0 <= luid <= _MAX_LAST_UPDATE_ID:
        shown = repr(luid)[:40] if isinstance(luid, int | float | str) else f"of type {type(luid).__name__}"
        raise MalformedPayloadError(f"lastUpdateId {shown} is not an integer in [0, 2^63)", symbol=stream.symbol)
    bid = _levels(data["bids"], Side.BID, stream, luid)
    ask = _levels(data["asks"], Side.ASK, stream, luid)
    if (raw.count(":") if isinstance(raw, str) else raw.count(b":")) != _N_KEYS:
        raise MalformedPayloadError(f"repeated field {_repeated_key(raw)!r}", symbol=stream.symbol, last_update_id=luid)
    # One scale for the book: both sides agree, or one of them is empty (its scale is -1).
    scale = bid.scale if bid.scale == ask.scale or ask.scale == -1 else ask.scale if bid.scale == -1 else None
    columns = (bid.prices, bid.quantities, ask.prices, ask.quantities)
    return BookSnapshot(
        symbol=stream.symbol,
        depth=stream.depth,
        last_update_id=luid,
        received_ns=received_ns,
        bid_prices=bid.prices,
        bid_quantities=bid.quantities,
        ask_prices=ask.prices,
        ask_quantities=ask.quantities,
        parsed=ParsedNumbers(columns, bid.fp, bid.fq, ask.fp, ask.fq, None if scale == -1 else scale),
    )


def _check_size(raw: str | bytes) -> None:
    # len() of a str counts characters, a lower bound of its UTF-8 size and a quarter of the upper bound:
    # encode only a non-ASCII text that could be over the limit.
    n = len(raw)
    if n * 4 > MAX_FRAME_BYTES and isinstance(raw, str) and not raw.isascii():
        n = len(raw.encode("utf-8", "surrogatepass"))
    if n > MAX_FRAME_BYTES:
        raise MalformedPayloadError(f"frame of {n} bytes exceeds {MAX_FRAME_BYTES}")


def _repeated_key(raw: str | bytes) -> str:
    """The first key repeated within one object of `raw` (valid, shallow JSON: the frame passed every other check)."""
    seen: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        seen.extend(k for i, k in enumerate(keys) if k in keys[:i])
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except ValueError:
        return "?"
    return seen[0][:40] if seen else "?"


@dataclass(frozen=True, slots=True)
class _Side:
    prices: tuple[str, ...]
    quantities: tuple[str, ...]
    fp: tuple[float, ...]
    fq: tuple[float, ...]
    scale: int | None  # every value's decimals when they agree, None when not, -1 for an empty side


_EMPTY = _Side((), (), (), (), -1)


@cache
def _uniform_re(scale: int) -> re.Pattern[str]:
    """`_NUMBERS_RE` restricted to values with exactly `scale` decimals (no point at all when 0)."""
    one = rf"(?:0|[1-9][0-9]{{0,19}})\.[0-9]{{{scale}}}" if scale else "(?:0|[1-9][0-9]{0,19})"
    return re.compile(rf"{one}(?:\|{one})*")


def _levels(levels: Any, side: Side, stream: StreamName, luid: int) -> _Side:
    def bad(reason: str) -> MalformedPayloadError:
        return MalformedPayloadError(f"{side}s: {reason}", symbol=stream.symbol, last_update_id=luid)

    if not isinstance(levels, list):
        raise bad("not a list of levels")
    if len(levels) > stream.depth:
        raise bad(f"{len(levels)} levels exceed the stream depth {stream.depth}")
    if not levels:
        return _EMPTY
    # Checked at C level: every level a list (no tuple, string or dict slips through zip) of two items.
    if set(map(type, levels)) != {list} or set(map(len, levels)) != {2}:
        raise bad("a level is not a [price, qty] pair")
    prices: tuple[str, ...]
    qtys: tuple[str, ...]
    try:
        prices, qtys = zip(*levels, strict=True)
        # One regex over the joined side is several times faster than one match per value; counting the
        # separators makes sure no value smuggled one in ("1|2" would otherwise read as two numbers).
        jp, jq = "|".join(prices), "|".join(qtys)
    except TypeError:
        raise bad("a price or quantity is not a string") from None
    n_sep = len(prices) - 1
    if jp.count("|") != n_sep or jq.count("|") != n_sep:
        raise bad("a price or quantity is not a plain decimal string (at most 20 digits each side, no sign)")
    # Binance writes every value with the same decimals: try that grammar first (it also tells the side's scale).
    point = prices[0].find(".")
    scale: int | None = 0 if point < 0 else len(prices[0]) - point - 1
    if not (
        scale is not None
        and scale <= _MAX_DECIMALS
        and _uniform_re(scale).fullmatch(jp)
        and _uniform_re(scale).fullmatch(jq)
    ):
        if not (_NUMBERS_RE.fullmatch(jp) and _NUMBERS_RE.fullmatch(jq)):
            raise bad("a price or quantity is not a plain decimal string (at most 20 digits each side, no sign)")
        scale = None
    fp, fq = _floats(prices, qtys, jp, jq, scale)
    if min(fp) <= 0.0:
        raise bad("a price is zero")
    if min(fq) <= 0.0:
        raise bad("a quantity is zero")
    descending = side is Side.BID
    # float() is monotonic, so a strict float order proves the decimal order; anything else is looked at closely.
    if not all(map(operator.gt, fp, fp[1:]) if descending else map(operator.lt, fp, fp[1:])):
        _check_order(prices, fp, descending=descending, bad=bad)
    return _Side(prices, qtys, fp, fq, scale)


def _floats(
    prices: tuple[str, ...], qtys: tuple[str, ...], jp: str, jq: str, scale: int | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """float() of each value. With a point in every value (scale > 0) the joined side is a JSON array of floats:
    orjson reads it in one call, several times faster than a float() per value and correctly rounded like it
    (tests/unit/models/test_book.py compares the two)."""
    if scale:
        try:
            both = orjson.loads(f"[{jp.replace('|', ',')},{jq.replace('|', ',')}]")
        except orjson.JSONDecodeError:  # not expected of validated values; float() decides
            pass
        else:
            n = len(prices)
            return tuple(both[:n]), tuple(both[n:])
    return tuple(map(float, prices)), tuple(map(float, qtys))


def _check_order(prices: tuple[str, ...], fp: tuple[float, ...], *, descending: bool, bad: Any) -> None:
    # float() is monotonic, so a strict float order proves the decimal order; ties fall back to exact Decimals.
    for i in range(1, len(fp)):
        a, b = (fp[i - 1], fp[i]) if descending else (fp[i], fp[i - 1])
        if a > b:
            continue
        if a == b:
            da, db = Decimal(prices[i - 1]), Decimal(prices[i])
            if (da > db) if descending else (db > da):
                continue
        order = "descending" if descending else "ascending"
        raise bad(f"prices not strictly {order} at level {i} (duplicate or out-of-order level)")
