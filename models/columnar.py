"""The batch fast path: parse, validate, measure and encode a whole batch of depth frames at once, in columns
(frames spelled as Binance spells them cut into tokens, any other JSON read by pyarrow's JSON reader, then
vectorised numpy), instead of one Python object per price. Pure: no I/O.

It accepts only what `models.book.parse_frame` accepts and gives what the per-frame path gives: the same
`models.metrics` floats (sums left to right, as `sum()` adds them) and the same `models.encoding` text. Anything it is
not sure of — malformed JSON, a missing or extra field, an empty side, values of mixed scales, a zero, levels out of
order, a value an int64 cannot hold (over 19 digits, or 19 above 2^63 - 1), a line break in a frame — it leaves to
the per-frame path by index, which stores the book or rejects it with its reason. tests/unit/models/test_columnar.py
checks both paths agree, frame by frame, on valid and broken input. Floats are each value's integer over its power of
ten (exact, hence correctly rounded, as float() is, up to 2^53) or Arrow's correctly rounded string to float64 cast
beyond; the tests compare them with float().
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from models.errors import MalformedPayloadError
from models.vocabulary import MAX_FRAME_BYTES, parse_stream_name

__all__ = ["Columns", "parse_columns"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

_SCHEMA = pa.schema(
    [
        ("stream", pa.string()),
        (
            "data",
            pa.struct(
                [
                    ("lastUpdateId", pa.int64()),
                    ("bids", pa.list_(pa.list_(pa.string()))),
                    ("asks", pa.list_(pa.list_(pa.string()))),
                ]
            ),
        ),
    ]
)
_PARSE = pj.ParseOptions(explicit_schema=_SCHEMA, unexpected_field_behavior="error")
_READ = pj.ReadOptions(use_threads=False, block_size=1 << 26)
# A plain decimal with a point, no sign and no leading zero, of at most 19 digits and, with 19, at most 2^63 - 1 once
# the point is out: an int64 holds it (the quantities of the cheapest coins have 11 digits before the point, 8 after).
_MAX_CHARS = 20  # 19 digits and the point
_MAX_INT64 = str(2**63 - 1)
_NO_BYTES = np.zeros(0, dtype=np.uint8)
_POW10_I = np.array([10**i for i in range(19)], dtype=np.int64)
_POW10_F = np.array([10.0**i for i in range(19)], dtype=np.float64)  # exact: 10^i for i <= 22 is a binary64
_EXACT_INT = 2**53  # every integer up to it is a binary64
# Frames longer than this many characters may be over MAX_FRAME_BYTES in UTF-8: parse_frame decides.
_MAX_CHARS_FRAME = MAX_FRAME_BYTES // 4
_MAX_NS = 2**63  # times past 2262 do not fit an int64 of ns: parse_frame takes them
_SPLIT = 8  # a batch the reader refuses is read again in this many parts, down to the frames it refuses
# A frame spelled as Binance spells it, once its digits and points are taken out: compact, these keys in this order, a
# stream name of lower-case letters and '@', one level or more a side, values that are strings of digits and points.
# Such frames are cut at their quotes (`_tokenize`).
_TEMPLATE = re.compile(
    rb'\{"stream":"[a-z@]*","data":\{"lastUpdateId":,"bids":\[((?:\["",""\],)*\["",""\])\],'
    rb'"asks":\[((?:\["",""\],)*\["",""\])\]\}\}'
)
_TEMPLATE_LINE = re.compile(_TEMPLATE.pattern + rb"\n")
_NUMERALS = b"0123456789."
_SLICE = 1 << 18  # bytes of the batch searched at once (`_positions`)
_FIXED_STRINGS = 6  # per frame: "stream", the name, "data", "lastUpdateId", "bids", "asks"
# The bytes of a frame's line (its end included) that are not its name's, its id's or its values' are those of the
# template's line with no name and no level and 8n - 1 a side of n levels (`["",""]` and commas): this many, and 4 a
# value (2n values a side).
_TEMPLATE_BYTES = len(b'{"stream":"","data":{"lastUpdateId":,"bids":[],"asks":[]}}\n') - 2


@dataclass(frozen=True, slots=True)
class Columns:
    """The books the fast path took, one entry per book, in the order of `taken` (indices into the input)."""

    taken: list[int]
    received_ns: I64
    symbol: pa.Array  # upper case, as parse_stream_name gives it
    depth: I64
    last_update_id: I64
    scale: I64
    bid_vwap: F64
    ask_vwap: F64
    price: F64
    crossed: B
    best_bid: I64  # scaled integers: the first price of each side times 10^scale
    best_ask: I64
    levels: tuple[pa.Array, pa.Array, pa.Array, pa.Array]  # models.encoding's text: bid prices, bid qtys, ask ...

    def __len__(self) -> int:
        return len(self.taken)


@dataclass(frozen=True, slots=True)
class _Levels:
    """One side of every book of a `_Part`: its values in order (price, quantity, price, ...) and its levels per
    book (one or more each)."""

    values: pa.StringArray
    count: I64
    digits_and_points: bool  # every value is known to be made of digits and points only (the template saw them)


@dataclass(frozen=True, slots=True)
class _Part:
    """Books one reader read, each of the shape parse_frame asks for (a stream name, a non-negative id, two sides
    of one level or more, each level a pair of strings); their values are not judged yet."""

    idx: list[int]  # per book: its index in the input
    stream: pa.StringArray
    last_update_id: I64
    bids: _Levels
    asks: _Levels


def parse_columns(frames: Sequence[tuple[int, str]]) -> tuple[Columns, list[int]]:
    """(what the fast path took, the indices of the frames it leaves to models.book.parse_frame). `frames` are
    (received_ns, text) with received_ns already checked (an int of ns in [1970, 10000))."""
    # Only text that starts as an object: pyarrow's reader crashes on a block that starts with `null` (26.0), and a
    # byte-order mark, which it skips, makes the text invalid JSON for parse_frame.
    candidates = [
        i
        for i, (ns, raw) in enumerate(frames)
        if raw[:1] == "{" and len(raw) <= _MAX_CHARS_FRAME and "\n" not in raw and "\r" not in raw and ns < _MAX_NS
    ]
    parts: list[_Part] = []
    tables: list[pa.Table] = []
    read: list[int] = []
    _read(frames, _tokenize(frames, candidates, parts), tables, read)
    if tables:
        part = _part_from_table(pa.concat_tables(tables) if len(tables) > 1 else tables[0], read)
        if part is not None:
            parts.append(part)
    taken: list[Columns] = []
    for part in parts:
        cols = _columns(part, np.array([frames[i][0] for i in part.idx], dtype=np.int64))
        if len(cols):
            taken.append(replace(cols, taken=[part.idx[i] for i in cols.taken]))
    if not taken:
        return _empty(), list(range(len(frames)))
    cols = _in_input_order(taken)
    taken_set = set(cols.taken)
    return cols, [i for i in range(len(frames)) if i not in taken_set]


def _in_input_order(parts: list[Columns]) -> Columns:
    """The books of every part in one Columns, in the order they came (parts may interleave)."""
    taken = [i for c in parts for i in c.taken]
    if len(parts) == 1 and taken == sorted(taken):
        return parts[0]
    order = np.argsort(np.array(taken), kind="stable")
    rows = pa.array(order)

    def arrays(name: str) -> Any:
        return np.concatenate([getattr(c, name) for c in parts])[order]

    def strings(get: Any) -> pa.Array:
        return pa.concat_arrays([get(c) for c in parts]).take(rows)

    return Columns(
        taken=[taken[i] for i in order.tolist()],
        received_ns=arrays("received_ns"),
        symbol=strings(lambda c: c.symbol),
        depth=arrays("depth"),
        last_update_id=arrays("last_update_id"),
        scale=arrays("scale"),
        bid_vwap=arrays("bid_vwap"),
        ask_vwap=arrays("ask_vwap"),
        price=arrays("price"),
        crossed=arrays("crossed"),
        best_bid=arrays("best_bid"),
        best_ask=arrays("best_ask"),
        levels=(
            strings(lambda c: c.levels[0]),
            strings(lambda c: c.levels[1]),
            strings(lambda c: c.levels[2]),
            strings(lambda c: c.levels[3]),
        ),
    )


def _read(frames: Sequence[tuple[int, str]], idx: list[int], tables: list[pa.Table], read: list[int]) -> None:
    """Read the frames `idx` as newline-delimited JSON; on refusal, read them again in parts (a frame refused alone
    is left out, for the per-frame path)."""
    if not idx:
        return
    try:
        table = pj.read_json(
            io.BytesIO("\n".join([frames[i][1] for i in idx]).encode("utf-8")),
            read_options=_READ,
            parse_options=_PARSE,
        )
    except (pa.ArrowInvalid, UnicodeEncodeError):
        table = None
    if table is not None and table.num_rows == len(idx):
        tables.append(table)
        read.extend(idx)
    elif len(idx) > 1:
        step = -(-len(idx) // _SPLIT)
        for k in range(0, len(idx), step):
            _read(frames, idx[k : k + step], tables, read)


def _tokenize(frames: Sequence[tuple[int, str]], idx: list[int], parts: list[_Part]) -> list[int]:
    """Read the frames `idx` that fit `_TEMPLATE` without a JSON parser, into a `_Part`; returns the others, for
    `_read`. With the template checked, every string is a key, the stream's name or a value, each at a place the
    level counts give, every value is a string of digits and points of a pair, one pair or more a side, and the id is
    between "lastUpdateId" and "bids"; digits and points anywhere else leave the frame to the JSON reader."""
    if not idx:
        return []
    try:
        blob = ("\n".join([frames[i][1] for i in idx]) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return idx
    skeleton = blob.translate(None, _NUMERALS)
    # One search over the whole batch: every frame fits when the matches follow each other from the first byte to
    # the last (the template holds no line break, so each is one line). Otherwise each line is matched alone.
    matches = list(_TEMPLATE_LINE.finditer(skeleton))
    pos = 0
    for m in matches:
        if m.start() != pos:
            break
        pos = m.end()
    if len(matches) != len(idx) or pos != len(skeleton):
        shapes = [_TEMPLATE.fullmatch(s) for s in skeleton.split(b"\n")[:-1]]
        matches = [m for m in shapes if m is not None]
        if len(matches) < len(idx):
            fit = [i for i, m in zip(idx, shapes, strict=True) if m is not None]
            return [i for i, m in zip(idx, shapes, strict=True) if m is None] + _tokenize(frames, fit, parts)
    # A side of n levels is 8n - 1 bytes of the template (`["",""]` and commas): 2n values.
    bid_values = (np.array([m.end(1) - m.start(1) for m in matches], dtype=np.int64) + 1) // 4
    ask_values = (np.array([m.end(2) - m.start(2) for m in matches], dtype=np.int64) + 1) // 4
    # The blob's quotes are the skeleton's: the text of string s is between quotes 2s and 2s + 1. As segments of
    # the blob itself (no copy), segment 2s is that text and segment 2s + 1 what lies between it and the next one.
    if len(blob) >= 2**31:
        return idx  # more than string offsets can hold: the JSON reader decides
    bounds = _positions(blob, ord('"'))
    strings = _FIXED_STRINGS + bid_values + ask_values
    if len(bounds) != 2 * int(strings.sum()):
        return idx  # cannot be, the template admits no other quote; the JSON reader decides
    bounds[0::2] += 1
    segments = pa.StringArray.from_buffers(len(bounds) - 1, pa.py_buffer(bounds), pa.py_buffer(blob))
    # Each frame's strings: "stream", the name, "data", "lastUpdateId", "bids", the bid values, "asks", the ask
    # values; the id is in the segment after "lastUpdateId", `":` id `,"`.
    first = 2 * (np.cumsum(strings) - strings)
    ids = pc.utf8_slice_codeunits(segments.take(pa.array(first + 7)), 2, -2)
    # A JSON integer: digits, no leading zero; the template lets points and empty ids through.
    id_len = _np(pc.binary_length(ids)).astype(np.int64)
    plain = (
        _np(pc.ascii_is_decimal(ids)).astype(np.bool_)
        & (id_len >= 1)
        & ~(_np(pc.starts_with(ids, "0")).astype(np.bool_) & (id_len > 1))
        & (
            (id_len < len(_MAX_INT64))
            | ((id_len == len(_MAX_INT64)) & _np(pc.less_equal(ids, _MAX_INT64)).astype(np.bool_))
        )
    )

    def side(at: I64, n: I64) -> tuple[_Levels, I64]:
        """The values of one side, the n of each frame from its segment `at` on (every other one: the strings),
        and their bytes per frame."""
        start = np.cumsum(n) - n
        values = segments.take(pa.array(np.repeat(at - 2 * start, n) + 2 * np.arange(int(n.sum()))))
        offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)[: len(values) + 1]
        per_frame: I64 = np.diff(offsets[np.append(start, len(values))]).astype(np.int64)
        return _Levels(values, n // 2, digits_and_points=True), per_frame

    bids, bid_bytes = side(first + 10, bid_values)
    asks, ask_bytes = side(first + 12 + 2 * bid_values, ask_values)
    stream = segments.take(pa.array(first + 2))
    name_len = _np(pc.binary_length(stream)).astype(np.int64)
    # The template was matched with every digit and point taken out, wherever they were: those of a frame must all be
    # in its name, its id and its values (one anywhere else is no JSON, or another key, or another value), its other
    # bytes the template's alone.
    lines = np.array([len(frames[i][1]) + 1 for i in idx], dtype=np.int64)  # ASCII, as the template is
    plain &= lines - name_len - id_len - bid_bytes - ask_bytes == _TEMPLATE_BYTES + 4 * (bid_values + ask_values)
    if not plain.all():
        fit = [i for i, ok in zip(idx, plain.tolist(), strict=True) if ok]
        return [i for i, ok in zip(idx, plain.tolist(), strict=True) if not ok] + _tokenize(frames, fit, parts)
    luid = _np(pc.cast(ids, pa.int64())).astype(np.int64)
    parts.append(_Part(list(idx), stream, luid, bids, asks))
    return []


def _positions(data: bytes, byte: int) -> npt.NDArray[np.int32]:
    """Where `byte` is in `data` (of less than 2^31 bytes), in order. Found a slice at a time, so that the temporaries
    stay small: those of a whole batch (a flag a byte, and 8 bytes a position) grew glibc's heap past its trim
    threshold, to be given back at the end of every batch and faulted in again (about 1,000 page faults a batch of
    1,000 frames)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    return np.concatenate(
        [np.flatnonzero(raw[k : k + _SLICE] == byte).astype(np.int32) + k for k in range(0, len(raw), _SLICE)]
    )


def _empty() -> Columns:
    z = np.zeros(0, dtype=np.int64)
    f = np.zeros(0, dtype=np.float64)
    s = pa.array([], pa.string())
    return Columns([], z, s, z, z, z, f, f, f, np.zeros(0, dtype=np.bool_), z, z, (s, s, s, s))


def _np(a: Any) -> Any:
    return a.to_numpy(zero_copy_only=False)


@dataclass(frozen=True, slots=True)
class _Side:
    ok: B  # per book
    offsets: I64  # per book: where its first level is in prices/qtys (every book of a _Part has one level or more)
    count: I64  # per book: its levels
    parent: I64  # per level: its book
    prices: I64
    qtys: I64
    fprices: F64  # float() of each value
    fqtys: F64
    zeros: I64  # per value (prices at even places, quantities at odd): its decimal trailing zeros
    scale: I64  # per level


def _part_from_table(table: pa.Table, read: list[int]) -> _Part | None:
    """The books of the JSON reader's table (row k is input frame read[k]) that have the shape `_Part` asks for."""
    n = table.num_rows
    stream = table.column("stream").combine_chunks()
    data = table.column("data").combine_chunks()
    luid = _np(pc.fill_null(data.field("lastUpdateId"), -1)).astype(np.int64)
    ok = (
        _np(stream.is_valid())
        & _np(data.is_valid())
        & (luid >= 0)
        & _well_formed(data.field("bids"), n)
        & _well_formed(data.field("asks"), n)
    )
    keep = np.flatnonzero(ok)
    if not len(keep):
        return None
    if len(keep) < n:
        rows = pa.array(keep)
        stream, data, luid = stream.take(rows), data.take(rows), luid[keep]

    def levels(side: pa.ListArray) -> _Levels:
        count = _np(pc.list_value_length(side)).astype(np.int64)
        return _Levels(side.flatten().flatten(), count, digits_and_points=False)

    return _Part([read[i] for i in keep.tolist()], stream, luid, levels(data.field("bids")), levels(data.field("asks")))


def _well_formed(levels: pa.ListArray, n: int) -> B:
    """Per book: this side is a list of at least one level, each a pair of strings (not null)."""
    count = _np(pc.fill_null(pc.list_value_length(levels), 0)).astype(np.int64)
    ok: B = (count >= 1) & _np(levels.is_valid())
    pairs = levels.flatten()
    level_parent = _np(pc.list_parent_indices(levels)).astype(np.int64)
    bad = _np(pc.fill_null(pc.not_equal(pc.list_value_length(pairs), 2), True)).astype(np.bool_)
    if pairs.flatten().null_count:
        value_parent = _np(pc.list_parent_indices(pairs)).astype(np.int64)
        null_value = _np(pairs.flatten().is_null()).astype(np.bool_)
        bad[value_parent[null_value]] = True
    ok &= np.bincount(level_parent[bad], minlength=n) == 0
    return ok


def _side(levels: _Levels, n: int, depth: I64) -> _Side:
    """The levels of one side of every book, as scaled integers, and which books they leave fit for the fast
    path."""
    count = levels.count
    ok = count <= depth
    values = levels.values
    # The grammar, in cheap steps: taking out the point leaves ASCII digits only (known for values the template
    # saw), exactly one point was taken out, not in first or last place, a leading zero only right before it, at most
    # 19 digits in all, and with 19 at most 2^63 - 1 (digit strings of one length compare as their numbers do).
    digits, length, points, point, zero_first = _points_out(values)
    scale = length - point - 1
    fine = (points == 1) & (point >= 1) & (scale >= 1) & (length <= _MAX_CHARS) & ~(zero_first & (point > 1))
    if not levels.digits_and_points:
        fine &= _np(pc.ascii_is_decimal(digits)).astype(np.bool_)
    widest = length == _MAX_CHARS
    if widest.any():
        fine[widest] &= _np(pc.less_equal(digits.take(pa.array(np.flatnonzero(widest))), _MAX_INT64)).astype(np.bool_)
    # float() of each value without reading text again (Clinger's fast path): an integer of at most 2^53 and a power
    # of ten of at most 10^22 are both exact in binary64, so their IEEE quotient is the correctly rounded value of
    # the decimal, which float() gives. The few longer values are cast from their text.
    if fine.all():  # the common case, without masks (the quotients of the longer values are replaced below)
        ints: I64 = _np(pc.cast(digits, pa.int64()))
        floats: F64 = ints / _POW10_F[scale]
    else:  # only what the grammar admits; the others' books fail below
        ints = np.zeros(len(values), dtype=np.int64)
        ints[fine] = _np(pc.cast(digits.take(pa.array(np.flatnonzero(fine))), pa.int64()))
        floats = np.zeros(len(values), dtype=np.float64)
        small = fine & (ints <= _EXACT_INT)
        floats[small] = ints[small] / _POW10_F[scale[small]]
    big = fine & (ints > _EXACT_INT)
    if big.any():
        floats[big] = _np(pc.cast(values.take(pa.array(np.flatnonzero(big))), pa.float64()))
    level_parent = np.repeat(np.arange(n), count)
    offsets = np.cumsum(count) - count
    prices, qtys = ints[0::2], ints[1::2]
    bad_value = ~fine[0::2] | ~fine[1::2] | (prices <= 0) | (qtys <= 0) | (scale[0::2] != scale[1::2])
    ok &= np.bincount(level_parent[bad_value], minlength=n) == 0
    # At most 18 (a value taken is a positive int64); a longer value's book is not taken, but its place must stay an
    # index.
    zeros = np.minimum(length - points - _np(pc.binary_length(pc.utf8_rtrim(digits, "0"))).astype(np.int64), 18)
    return _Side(ok, offsets, count, level_parent, prices, qtys, floats[0::2], floats[1::2], zeros, scale[0::2])


def _points_out(values: pa.StringArray) -> tuple[pa.StringArray, I64, I64, I64, B]:
    """(the values with every point taken out, each value's length in bytes, its number of points, where its first
    point is or -1, whether it starts with "0"), from the array's buffers: one pass over the bytes where Arrow's
    replace and find take two. A null value reads as empty (its book is not taken: `_well_formed`)."""
    if not len(values):
        none = np.zeros(0, dtype=np.int64)
        return pa.array([], pa.string()), none, none, none, np.zeros(0, dtype=np.bool_)
    _, offset_buffer, data_buffer = values.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=np.int32)[values.offset : values.offset + len(values) + 1]
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]] if data_buffer else _NO_BYTES
    offsets -= offsets[0]
    starts, ends = offsets[:-1], offsets[1:]
    is_point = data == ord(".")
    at = np.flatnonzero(is_point)
    n = len(values)
    if len(at) == n and bool(((at >= starts) & (at < ends)).all()):
        # n points, the k-th inside value k: one point in every value (the common case, without a search).
        points = np.ones(n, dtype=np.int64)
        point = at - starts
        kept = (offsets - np.arange(n + 1)).astype(np.int32)
    else:
        before = np.searchsorted(at, offsets)  # points before each value's first byte
        points = np.diff(before)
        point = np.where(points > 0, np.append(at, -1)[before[:-1]] - starts, -1)
        kept = (offsets - before).astype(np.int32)
    # The bytes that are not points: Arrow's filter copies the runs between them, where a numpy mask goes byte by byte.
    bytes_kept = pa.BooleanArray.from_buffers(
        pa.bool_(), len(data), [None, pa.py_buffer(np.packbits(~is_point, bitorder="little"))]
    )
    kept_data = pc.filter(pa.Array.from_buffers(pa.uint8(), len(data), [None, pa.py_buffer(data)]), bytes_kept)
    digits = pa.StringArray.from_buffers(n, pa.py_buffer(kept), kept_data.buffers()[1])
    length = ends - starts
    zero_first = np.zeros(n, dtype=np.bool_)
    if len(data):  # an empty value's place may be past the end: its byte is not looked at
        zero_first = (length > 0) & (data[np.minimum(starts, len(data) - 1)] == ord("0"))
    return digits, length, points, point, zero_first


# Stream name -> (symbol, depth) of models.vocabulary.parse_stream_name, ("", 0) for a name it refuses; a batch of
# the whole market names hundreds of streams, each parsed once a process (cleared past _STREAMS_MAX names).
_STREAMS: dict[str, tuple[str, int]] = {}
_STREAMS_MAX = 100_000


def _stream(name: str) -> tuple[str, int]:
    known = _STREAMS.get(name)
    if known is None:
        try:
            parsed = parse_stream_name(name)
        except MalformedPayloadError:
            known = ("", 0)  # no depth admits a level: the book is not taken
        else:
            known = (parsed.symbol, parsed.depth)
        if len(_STREAMS) >= _STREAMS_MAX:
            _STREAMS.clear()
        _STREAMS[name] = known
    return known


def _columns(part: _Part, received_ns: I64) -> Columns:
    """The Columns of the books of `part` the fast path takes (`taken`: their places in the part)."""
    n = len(part.idx)
    # Streams: a few distinct names per batch (hundreds for the whole market), each parsed once a process.
    names = pc.unique(part.stream)
    symbols, depths = zip(*(_stream(name) for name in names.to_pylist()), strict=True)
    where = _np(pc.index_in(part.stream, names)).astype(np.int64)
    depth = np.array(depths, dtype=np.int64)[where]
    luid = part.last_update_id
    bids = _side(part.bids, n, depth)
    asks = _side(part.asks, n, depth)
    ok = bids.ok & asks.ok
    # One scale per book: every value of both sides has the first bid price's.
    scale = np.zeros(n, dtype=np.int64)
    has = np.flatnonzero(ok)
    scale[has] = bids.scale[bids.offsets[has]]
    for side in (bids, asks):
        ok &= np.bincount(side.parent[side.scale != scale[side.parent]], minlength=n) == 0
    # Strictly ordered levels (bids descending, asks ascending): exact, all values of a book share its scale.
    for side, sign in ((bids, 1), (asks, -1)):
        same = side.parent[1:] == side.parent[:-1]
        wrong = same & (sign * (side.prices[:-1] - side.prices[1:]) <= 0)
        ok &= np.bincount(side.parent[1:][wrong], minlength=n) == 0
    keep = np.flatnonzero(ok)
    if not len(keep):
        return _empty()
    bid_vwap, ask_vwap = _vwap(bids, n), _vwap(asks, n)
    best_bid, best_ask = bids.prices[bids.offsets], asks.prices[asks.offsets]
    sym = pa.array(symbols, pa.string()).take(pa.array(where[keep]))
    levels = _encoded(bids, asks, keep)
    cols = Columns(
        taken=keep.tolist(),
        received_ns=received_ns[keep],
        symbol=sym,
        depth=depth[keep],
        last_update_id=luid[keep],
        scale=scale[keep],
        bid_vwap=bid_vwap[keep],
        ask_vwap=ask_vwap[keep],
        price=((bid_vwap + ask_vwap) / 2.0)[keep],
        crossed=(best_bid >= best_ask)[keep],
        best_bid=best_bid[keep],
        best_ask=best_ask[keep],
        levels=levels,
    )
    return cols


def _vwap(side: _Side, n: int) -> F64:
    """sum(p * q) / sum(q) per book over floats equal to float() of each value, added left to right from the
    first level, as models.metrics does (x + 0.0 == x, so the padding of shorter books changes nothing)."""
    p, q = side.fprices, side.fqtys
    pos = np.arange(len(p)) - side.offsets[side.parent]
    width = int(pos.max()) + 1 if len(pos) else 1
    notional = np.zeros((n, width))
    volume = np.zeros((n, width))
    notional[side.parent, pos] = p * q
    volume[side.parent, pos] = q
    num, den = notional[:, 0].copy(), volume[:, 0].copy()
    for j in range(1, width):
        num += notional[:, j]
        den += volume[:, j]
    with np.errstate(divide="ignore", invalid="ignore"):
        out: F64 = num / den
    return out


def _encoded(bids: _Side, asks: _Side, keep: I64) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
    """models.encoding's column text ("k,v1,v2,...") of the books `keep`: bid prices, bid quantities, ask prices, ask
    quantities. k is the fewest trailing zeros of the book's values in that column, each value is over 10^k, and the
    prices after the first are their distances from it. The four columns' integers are written straight to their
    places in one array (no insert, which sorts and masks, and one set of places a side) and cast to text in one go."""
    sides = ((bids, True), (asks, False))
    ints = np.empty(sum(2 * (int(side.count[keep].sum()) + len(keep)) for side, _ in sides), dtype=np.int64)
    offsets: list[npt.NDArray[np.int32]] = []
    start = 0
    for side, descending in sides:
        level: I64 | None = None  # the side's levels of the books kept, in order; None: all of them
        if len(keep) == len(side.count):  # every book (the common case): the side's levels as they are
            count, book = side.count, side.parent
        else:
            count = side.count[keep]
            book = np.repeat(np.arange(len(keep)), count)
            level = np.arange(len(book)) - (np.cumsum(count) - count)[book] + side.offsets[keep][book]
        # Each book's text in its column: its k, then its values.
        at_k = np.cumsum(count + 1) - (count + 1)
        at_v = np.arange(len(book)) + book + 1
        text_offsets = np.append(at_k, len(book) + len(count)).astype(np.int32)
        for price in (True, False):
            # The fewest trailing zeros of each book's values (every book has a level: no segment is empty).
            k = np.minimum.reduceat(side.zeros[0::2] if price else side.zeros[1::2], side.offsets)
            if price:
                best = side.prices[side.offsets]
                values = best[side.parent] - side.prices if descending else side.prices - best[side.parent]
                values[side.offsets] = best
            else:
                values = side.qtys
            values = values // _POW10_I[k[side.parent]]
            column = ints[start : start + len(book) + len(count)]
            column[at_k] = k if level is None else k[keep]
            column[at_v] = values if level is None else values[level]
            offsets.append(text_offsets + start)
            start += len(column)
    text = pa.array(ints).cast(pa.string())
    out = [pc.binary_join(pa.ListArray.from_arrays(pa.array(o), text), ",") for o in offsets]
    return out[0], out[1], out[2], out[3]
