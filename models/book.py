"""Order-book values and the parser of Binance partial-depth frames. Pure: no I/O, no clock, no logging.

A frame is the combined-stream text the websocket delivered, e.g. (tests/fixtures/binance_depth_samples.jsonl)::

    {"stream":"btcusdt@depth20@100ms","data":{"lastUpdateId":11719214114,
     "bids":[["40069.98000000","0.00002300"],...],"asks":[["40069.99000000","1.32492400"],...]}}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

import orjson

from models.errors import MalformedPayloadError
from models.vocabulary import MAX_FRAME_BYTES, StreamName, parse_stream_name

__all__ = ["BookSnapshot", "Side", "parse_frame"]

_MAX_LAST_UPDATE_ID = 2**63 - 1
# Plain decimal strings only: no sign, exponent, NaN or Infinity; at most 20 digits either side of the point.
_NUMBER = r"(?:0|[1-9][0-9]{0,19})(?:\.[0-9]{1,20})?"
_NUMBERS_RE = re.compile(rf"{_NUMBER}(?:\|{_NUMBER})*")
_FRAME_KEYS = frozenset(("stream", "data"))
_DATA_KEYS = frozenset(("lastUpdateId", "bids", "asks"))
# A frame with exactly these keys holds one colon per key and no other (no value admitted can contain one), so
# a count above this means a repeated key, which orjson would otherwise resolve silently (last one wins).
_N_KEYS = len(_FRAME_KEYS) + len(_DATA_KEYS)


class Side(StrEnum):
    BID = "bid"
    ASK = "ask"


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """One partial order book exactly as sent: prices and quantities are the venue's decimal strings."""

    symbol: str
    depth: int
    last_update_id: int
    received_ns: int
    bid_prices: tuple[str, ...]
    bid_quantities: tuple[str, ...]
    ask_prices: tuple[str, ...]
    ask_quantities: tuple[str, ...]


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
    bid_p, bid_q = _levels(data["bids"], Side.BID, stream, luid)
    ask_p, ask_q = _levels(data["asks"], Side.ASK, stream, luid)
    if (raw.count(":") if isinstance(raw, str) else raw.count(b":")) != _N_KEYS:
        raise MalformedPayloadError(f"repeated field {_repeated_key(raw)!r}", symbol=stream.symbol, last_update_id=luid)
    return BookSnapshot(
        symbol=stream.symbol,
        depth=stream.depth,
        last_update_id=luid,
        received_ns=received_ns,
        bid_prices=bid_p,
        bid_quantities=bid_q,
        ask_prices=ask_p,
        ask_quantities=ask_q,
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


def _levels(levels: Any, side: Side, stream: StreamName, luid: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    def bad(reason: str) -> MalformedPayloadError:
        return MalformedPayloadError(f"{side}s: {reason}", symbol=stream.symbol, last_update_id=luid)

    if not isinstance(levels, list):
        raise bad("not a list of levels")
    if len(levels) > stream.depth:
        raise bad(f"{len(levels)} levels exceed the stream depth {stream.depth}")
    if not levels:
        return (), ()
    if not all(type(lv) is list and len(lv) == 2 for lv in levels):
        raise bad("a level is not a [price, qty] pair")
    try:
        prices, qtys = zip(*levels, strict=True)
        # One regex over the joined side is several times faster than one match per value; counting the
        # separators makes sure no value smuggled one in ("1|2" would otherwise read as two numbers).
        jp, jq = "|".join(prices), "|".join(qtys)
        n_sep = len(prices) - 1
        ok = (
            jp.count("|") == n_sep
            and jq.count("|") == n_sep
            and _NUMBERS_RE.fullmatch(jp)
            and _NUMBERS_RE.fullmatch(jq)
        )
    except TypeError:
        raise bad("a price or quantity is not a string") from None
    if not ok:
        raise bad("a price or quantity is not a plain decimal string (at most 20 digits each side, no sign)")
    fp = [float(p) for p in prices]
    if not all(f > 0.0 for f in fp):
        raise bad("a price is zero")
    if not all(float(q) > 0.0 for q in qtys):
        raise bad("a quantity is zero")
    _check_order(prices, fp, descending=side is Side.BID, bad=bad)
    return tuple(prices), tuple(qtys)


def _check_order(prices: tuple[str, ...], fp: list[float], *, descending: bool, bad: Any) -> None:
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
