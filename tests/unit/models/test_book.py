"""models.book: the real Binance frames parse losslessly, and every kind of bad frame is rejected with its reason."""

from __future__ import annotations

import json
from dataclasses import replace

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.book import BookSnapshot, parse_frame
from models.errors import InvalidBookError, MalformedPayloadError
from models.metrics import book_metrics
from models.vocabulary import MAX_FRAME_BYTES, parse_stream_name
from tests.factories import (
    RECEIVED_NS,
    depth_samples,
    diff_depth_sample,
    make_data,
    make_frame,
)

pytestmark = pytest.mark.unit

SAMPLES = depth_samples()


def parse(raw: str | bytes) -> BookSnapshot:
    return parse_frame(raw, received_ns=RECEIVED_NS)


def rejects(raw: str | bytes, match: str) -> MalformedPayloadError:
    with pytest.raises(MalformedPayloadError, match=match) as info:
        parse(raw)
    return info.value


# --- the recorded frames ------------------------------------------------------------------------------------------


def test_fixture_holds_the_documented_frames() -> None:
    streams = [orjson.loads(raw)["stream"] for raw in SAMPLES]
    assert len(SAMPLES) == 10
    assert set(streams) == {
        "btcusdt@depth5@100ms",
        "ethusdt@depth5@100ms",
        "trxusdt@depth5@100ms",
        "bnbusdt@depth5@100ms",
        "flmusdt@depth20@100ms",
        "ethusdt@depth20",
        "btcusdt@depth20@100ms",
    }


@pytest.mark.parametrize("raw", SAMPLES, ids=[f"{i}-{orjson.loads(r)['stream']}" for i, r in enumerate(SAMPLES)])
def test_real_frame_parses_exactly_as_sent(raw: str) -> None:
    msg = orjson.loads(raw)
    data = msg["data"]

    book = parse(raw)

    stream = parse_stream_name(msg["stream"])
    assert book.symbol == stream.symbol == msg["stream"].split("@")[0].upper()
    assert book.depth == stream.depth
    assert book.last_update_id == data["lastUpdateId"]
    assert book.received_ns == RECEIVED_NS
    # Same strings (trailing zeros kept), same order, nothing re-formatted through float or Decimal.
    assert book.bid_prices == tuple(p for p, _ in data["bids"])
    assert book.bid_quantities == tuple(q for _, q in data["bids"])
    assert book.ask_prices == tuple(p for p, _ in data["asks"])
    assert book.ask_quantities == tuple(q for _, q in data["asks"])
    assert all(type(v) is str for v in book.bid_prices + book.bid_quantities + book.ask_prices + book.ask_quantities)


@pytest.mark.parametrize("raw", SAMPLES[:3])
def test_bytes_and_text_parse_alike(raw: str) -> None:
    assert parse(raw.encode()) == parse(raw)


def test_full_depth20_fixture_frame_keeps_all_levels() -> None:
    (raw,) = [r for r in SAMPLES if '"flmusdt@depth20@100ms"' in r]
    book = parse(raw)
    assert (book.symbol, book.depth, book.last_update_id) == ("FLMUSDT", 20, 165284515)
    assert len(book.bid_prices) == len(book.ask_prices) == 20
    assert (book.bid_prices[0], book.bid_quantities[0]) == ("0.48560000", "2036.02000000")
    assert (book.ask_prices[-1], book.ask_quantities[-1]) == ("0.49190000", "159.76000000")


def test_diff_depth_frame_is_rejected_as_unknown_stream() -> None:
    err = rejects(diff_depth_sample(), match="unknown stream 'btcusdt@depth@100ms'")
    assert isinstance(err, InvalidBookError)


# --- stream names (the grammar itself: test_vocabulary.py) -----------------------------------------------------------


@pytest.mark.parametrize("stream", ["btcusdt@trade", "btcusdt@depth", "btcusdt@depth7"])
def test_frame_of_unknown_stream_is_rejected(stream: str) -> None:
    rejects(make_frame(stream=stream), match="unknown stream")


# --- envelope -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["", "{", "not json", '{"stream": }', b"\xff\xfe", '"\ud800"'])
def test_not_json(raw: str | bytes) -> None:
    rejects(raw, match="not JSON")


@pytest.mark.parametrize("raw", ["[1, 2]", '"text"', "null", "42", "true"])
def test_not_an_object(raw: str) -> None:
    rejects(raw, match="not a combined-stream frame")


@pytest.mark.parametrize(
    "msg",
    [
        {"data": make_data()},
        {"stream": "btcusdt@depth20@100ms"},
        {"stream": 5, "data": make_data()},
        {"stream": None, "data": make_data()},
        {"lastUpdateId": 1, "bids": [], "asks": []},
    ],
    ids=["no-stream", "no-data", "stream-int", "stream-null", "bare-payload"],
)
def test_no_stream_or_data(msg: dict[str, object]) -> None:
    rejects(orjson.dumps(msg), match="not a combined-stream frame")


@pytest.mark.parametrize("data", [[], "x", None, 1])
def test_data_not_an_object(data: object) -> None:
    err = rejects(make_frame(data=data), match="'data' is not an object")
    assert err.symbol == "BTCUSDT"


@pytest.mark.parametrize("missing", ["lastUpdateId", "bids", "asks"])
def test_missing_field(missing: str) -> None:
    data = make_data()
    del data[missing]
    err = rejects(make_frame(data=data), match=rf"missing \['{missing}'\], unexpected \[\]")
    assert err.symbol == "BTCUSDT"


@pytest.mark.parametrize("extra", [{"E": 1}, {"e": "depthUpdate"}, {"lastupdateid": 1}])
def test_extra_field(extra: dict[str, object]) -> None:
    (name,) = extra
    rejects(make_frame(data=make_data(**extra)), match=rf"missing \[\], unexpected \['{name}'\]")


def test_extra_field_beside_stream_and_data() -> None:
    raw = make_frame()[:-1] + ',"id":1}'
    err = rejects(raw, match=r"unexpected fields \['id'\] beside 'stream' and 'data'")
    assert err.symbol == "BTCUSDT"


# Each key of the frame repeated, in the wrapper or in `data`, before or after its twin, with the same value or a
# different one, and written plainly or with a JSON escape (which a search for the key's text would miss).
_DUPLICATES = {
    "stream-first": ('{"stream":', '{"stream":"x","stream":', "stream"),
    "stream-last": ('"data":', '"stream":"btcusdt@depth20@100ms","data":', "stream"),
    "data-twice": ('{"stream":', '{"data":{},"stream":', "data"),
    "lastUpdateId": ('"bids":', '"lastUpdateId":11719214114,"bids":', "lastUpdateId"),
    "bids": ('"asks":', '"bids":[],"asks":', "bids"),
    "asks-escaped": ('"bids":', '"\\u0061sks":[["1","1"]],"bids":', "asks"),
}


@pytest.mark.parametrize(("anchor", "replacement", "key"), _DUPLICATES.values(), ids=_DUPLICATES.keys())
def test_repeated_field_is_rejected(anchor: str, replacement: str, key: str) -> None:
    frame = make_frame()
    raw = frame.replace(anchor, replacement, 1)
    assert raw != frame and orjson.loads(raw)  # valid JSON, which orjson reads keeping the last twin
    rejects(raw, match=f"repeated field '{key}'")


def test_repeated_field_with_the_same_value_is_rejected() -> None:
    raw = make_frame(bids=[]).replace('"bids":[]', '"bids":[],"bids":[]', 1)
    rejects(raw, match="repeated field 'bids'")


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["stream", "data", "lastUpdateId", "bids", "asks"]),
    st.sampled_from(['"btcusdt@depth20"', "{}", "[]", "1", '"1"', "null", '[["1","1"]]']),
    st.booleans(),
)
def test_fuzz_repeated_field_never_accepted(key: str, value: str, before: bool) -> None:
    frame = make_frame()
    obj_start = frame.index("{") if key in ("stream", "data") else frame.index("{", 1)
    dup = f'"{key}":{value}'
    raw = (
        frame[: obj_start + 1] + dup + "," + frame[obj_start + 1 :]
        if before
        else frame[:obj_start] + frame[obj_start:].replace(f'"{key}":', dup + f',"{key}":', 1)
    )
    with pytest.raises(MalformedPayloadError):
        parse(raw)


# --- lastUpdateId -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "luid",
    ["11719214114", 1.0, 1.5, True, False, None, [1], {"id": 1}, -1, 2**63, 2**64, 10**30],
    ids=repr,
)
def test_bad_last_update_id(luid: object) -> None:
    err = rejects(make_frame(last_update_id=luid), match=r"lastUpdateId .* is not an integer in \[0, 2\^63\)")
    assert err.symbol == "BTCUSDT"


@pytest.mark.parametrize("luid", [0, 1, 2**63 - 1])
def test_last_update_id_bounds_accepted(luid: int) -> None:
    assert parse(make_frame(last_update_id=luid)).last_update_id == luid


def test_deeply_nested_last_update_id_is_rejected_not_a_crash() -> None:
    n = 1000
    raw = '{"stream":"btcusdt@depth5","data":{"lastUpdateId":' + "[" * n + "]" * n + ',"bids":[],"asks":[]}}'
    assert len(raw) < MAX_FRAME_BYTES
    rejects(raw, match="lastUpdateId")


# --- levels -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["bids", "asks"])
@pytest.mark.parametrize("levels", [{}, "x", None, 1, {"1": "1"}], ids=repr)
def test_levels_not_a_list(side: str, levels: object) -> None:
    data = make_data()
    data[side] = levels
    err = rejects(make_frame(data=data), match=f"{side}: not a list of levels")
    assert (err.symbol, err.last_update_id) == ("BTCUSDT", 11719214114)


@pytest.mark.parametrize("side", ["bids", "asks"])
@pytest.mark.parametrize(
    "level",
    [["1"], ["1", "1", "1"], [], "1", {"price": "1", "qty": "1"}, None],
    ids=repr,
)
def test_level_not_a_pair(side: str, level: object) -> None:
    data = make_data()
    data[side] = [data[side][0], level]
    rejects(make_frame(data=data), match=rf"{side}: a level is not a \[price, qty\] pair")


@pytest.mark.parametrize("side", ["bids", "asks"])
@pytest.mark.parametrize("level", [[1.5, "1"], ["1", 2], [None, "1"], ["1", ["1"]], [1, 1]], ids=repr)
def test_non_string_numbers(side: str, level: list[object]) -> None:
    data = make_data()
    data[side] = [level]
    rejects(make_frame(data=data), match=f"{side}: a price or quantity is not a string")


BAD_NUMBERS = [
    "NaN",
    "nan",
    "Infinity",
    "inf",
    "1e5",
    "1E5",
    "-1.0",
    "+1",
    "00.1",
    "01",
    "1.",
    ".5",
    " 1",
    "1 ",
    "",
    "0x10",
    "1_000",
    "1,5",
    "\u0661",  # ARABIC-INDIC DIGIT ONE: float() would accept it
    "1.000000000000000000001",  # 21 decimals
    "123456789012345678901",  # 21 integer digits
]


@pytest.mark.parametrize("position", ["bid price", "bid qty", "ask price", "ask qty"])
@pytest.mark.parametrize("bad", BAD_NUMBERS, ids=repr)
def test_not_a_plain_decimal(position: str, bad: str) -> None:
    side, what = position.split()
    level = [bad, "1.00000000"] if what == "price" else ["100.00000000", bad]
    frame = make_frame(bids=[level], asks=[]) if side == "bid" else make_frame(bids=[], asks=[level])
    rejects(frame, match=f"{side}s: a price or quantity is not a plain decimal string")


@pytest.mark.parametrize(
    "value",
    [
        "0.00000000000000000001",  # 20 decimals
        "99999999999999999999",  # 20 integer digits
        "99999999999999999999.99999999999999999999",
        "1",
        "0.1",
    ],
)
def test_widest_plain_decimals_accepted(value: str) -> None:
    book = parse(make_frame(bids=[(value, value)], asks=[(value, value)]))
    assert book.bid_prices == book.bid_quantities == book.ask_prices == book.ask_quantities == (value,)


@pytest.mark.parametrize("level", [["1|2", "1"], ["1", "1|1"]], ids=["price", "qty"])
def test_value_containing_the_join_separator_is_rejected(level: list[str]) -> None:
    rejects(make_frame(bids=[level], asks=[]), match="not a plain decimal string")


@pytest.mark.parametrize("side", ["bids", "asks"])
@pytest.mark.parametrize("zero", ["0", "0.0", "0.00000000", "0.00000000000000000000"])
def test_zero_price(side: str, zero: str) -> None:
    data = make_data()
    data[side] = [[zero, "1.00000000"]]
    rejects(make_frame(data=data), match=f"{side}: a price is zero")


@pytest.mark.parametrize("side", ["bids", "asks"])
@pytest.mark.parametrize("zero", ["0", "0.00000000"])
def test_zero_qty(side: str, zero: str) -> None:
    data = make_data()
    data[side] = [["100.00000000", zero]]
    rejects(make_frame(data=data), match=f"{side}: a quantity is zero")


def _ladder(n: int, *, descending: bool) -> list[tuple[str, str]]:
    prices = [f"{100 + i}.00000000" for i in range(n)]
    return [(p, "1.00000000") for p in (reversed(prices) if descending else prices)]


@pytest.mark.parametrize("depth", [5, 10, 20])
def test_levels_up_to_stream_depth_accepted(depth: int) -> None:
    book = parse(make_frame(depth=depth, bids=_ladder(depth, descending=True), asks=_ladder(depth, descending=False)))
    assert len(book.bid_prices) == len(book.ask_prices) == depth


@pytest.mark.parametrize("depth", [5, 10, 20])
@pytest.mark.parametrize("side", ["bids", "asks"])
def test_more_levels_than_stream_depth(depth: int, side: str) -> None:
    levels = _ladder(depth + 1, descending=side == "bids")
    frame = (
        make_frame(depth=depth, bids=levels, asks=[])
        if side == "bids"
        else make_frame(depth=depth, bids=[], asks=levels)
    )
    rejects(frame, match=f"{side}: {depth + 1} levels exceed the stream depth {depth}")


@pytest.mark.parametrize(
    ("bids", "asks"),
    [
        ([("100", "1"), ("100", "2")], []),
        ([("100.0", "1"), ("100.00", "2")], []),
        ([], [("100", "1"), ("100", "2")]),
        ([], [("101", "1"), ("101.000", "2")]),
        ([("100", "1"), ("99", "1"), ("99", "1")], []),
    ],
    ids=["bid", "bid-same-value-other-scale", "ask", "ask-same-value-other-scale", "bid-not-first"],
)
def test_duplicate_price_level(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> None:
    rejects(make_frame(bids=bids, asks=asks), match="duplicate or out-of-order level")


def test_bids_must_descend() -> None:
    rejects(
        make_frame(bids=[("99", "1"), ("100", "1")], asks=[]), match="bids: prices not strictly descending at level 1"
    )


def test_asks_must_ascend() -> None:
    rejects(
        make_frame(bids=[], asks=[("101", "1"), ("100", "1")]), match="asks: prices not strictly ascending at level 1"
    )


def test_out_of_order_level_deep_in_the_side() -> None:
    bids = [*_ladder(5, descending=True), ("104.50000000", "1")]
    rejects(make_frame(bids=bids, asks=[]), match="bids: prices not strictly descending at level 5")


# Values that differ only past float64 precision: float() ties them, so only exact comparison can order them.
FLOAT_TIES = [
    ("1.00000000000000000001", "1.00000000000000000002"),
    ("99999999999999999998", "99999999999999999999"),
    ("12345678.12345678901234567890", "12345678.12345678901234567891"),
]


@pytest.mark.parametrize(("low", "high"), FLOAT_TIES)
def test_order_beyond_float_precision(low: str, high: str) -> None:
    assert float(low) == float(high)
    assert parse(make_frame(bids=[(high, "1"), (low, "1")], asks=[])).bid_prices == (high, low)
    assert parse(make_frame(bids=[], asks=[(low, "1"), (high, "1")])).ask_prices == (low, high)
    rejects(make_frame(bids=[(low, "1"), (high, "1")], asks=[]), match="bids: prices not strictly descending")
    rejects(make_frame(bids=[], asks=[(high, "1"), (low, "1")]), match="asks: prices not strictly ascending")


def test_brief_21_decimal_tie_is_rejected_for_its_precision() -> None:
    # Binance sends 8 decimals; 21 are beyond the 20 the schema allows, whatever their order.
    rejects(
        make_frame(bids=[], asks=[("1.000000000000000000001", "1"), ("1.000000000000000000002", "1")]),
        match="not a plain decimal string",
    )


# --- shapes that are valid ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bids", "asks"),
    [([], []), ([("100", "1")], []), ([], [("101", "1")])],
    ids=["both-empty", "no-asks", "no-bids"],
)
def test_empty_sides_allowed(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> None:
    book = parse(make_frame(bids=bids, asks=asks))
    assert book.bid_prices == tuple(p for p, _ in bids)
    assert book.ask_prices == tuple(p for p, _ in asks)


@pytest.mark.parametrize("ask", ["100.00000000", "99.00000000"], ids=["locked", "crossed"])
def test_crossed_book_is_left_to_the_metrics(ask: str) -> None:
    book = parse(make_frame(bids=[("100.00000000", "1")], asks=[(ask, "1")]))
    assert (book.bid_prices, book.ask_prices) == (("100.00000000",), (ask,))


def test_whitespace_between_tokens_is_fine() -> None:
    raw = '{ "stream" : "btcusdt@depth5" ,\n "data" : { "lastUpdateId" : 7 ,\t"bids" : [ [ "2" , "1" ] ] ,'
    raw += '\r\n "asks" : [ ] } }'
    book = parse(raw)
    assert (book.symbol, book.last_update_id, book.bid_prices, book.ask_prices) == ("BTCUSDT", 7, ("2",), ())


# --- size and nesting ---------------------------------------------------------------------------------------------


def _padded(size: int) -> str:
    frame = make_frame()
    return frame[:-1] + " " * (size - len(frame)) + "}"


def test_frame_of_exactly_max_bytes_accepted() -> None:
    raw = _padded(MAX_FRAME_BYTES)
    assert len(raw) == MAX_FRAME_BYTES
    assert parse(raw).symbol == "BTCUSDT"


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_frame_over_max_bytes(as_bytes: bool) -> None:
    raw = _padded(MAX_FRAME_BYTES + 1)
    rejects(raw.encode() if as_bytes else raw, match=f"frame of {MAX_FRAME_BYTES + 1} bytes exceeds {MAX_FRAME_BYTES}")


def test_size_is_counted_in_utf8_bytes_not_characters() -> None:
    # 30,000 characters but 90,000 bytes: a multi-byte stream name (not a valid one, but it must not get that far).
    raw = make_frame(stream="\u20ac" * 30_000)
    assert len(raw) < MAX_FRAME_BYTES < len(raw.encode())
    rejects(raw, match=f"frame of {len(raw.encode())} bytes exceeds {MAX_FRAME_BYTES}")


def test_non_ascii_frame_under_the_byte_limit_is_not_refused_for_size() -> None:
    raw = make_frame(stream="\u20ac" * 20_000)  # 60,000 bytes
    assert len(raw.encode()) < MAX_FRAME_BYTES
    rejects(raw, match="unknown stream")


def test_lone_surrogate_is_not_json_not_a_crash() -> None:
    rejects(make_frame(stream="btc\ud800usdt@depth20") * 5000, match="not JSON|exceeds")
    rejects(make_frame(stream="btc\ud800usdt@depth20"), match="not JSON")


@pytest.mark.parametrize("n", [100_000, 20_000, 2_000], ids=["100k-over-size-limit", "20k", "2k"])
def test_deeply_nested_json_is_rejected_not_a_crash(n: int) -> None:
    with pytest.raises(MalformedPayloadError):
        parse("[" * n + "]" * n)


@pytest.mark.parametrize("n", [20_000, 1_100])
def test_deeply_nested_levels_are_rejected_not_a_crash(n: int) -> None:
    raw = '{"stream":"btcusdt@depth5","data":{"lastUpdateId":1,"bids":' + "[" * n + "]" * n + ',"asks":[]}}'
    rejects(raw, match="not JSON")


# --- the error carries its context --------------------------------------------------------------------------------


def test_error_reason_and_context() -> None:
    err = rejects(make_frame("ethusdt", 5, bids=[("1", "0")], asks=[], last_update_id=42), match="quantity is zero")
    assert isinstance(err, InvalidBookError)
    assert err.reason == str(err) == "bids: a quantity is zero"
    assert (err.symbol, err.last_update_id) == ("ETHUSDT", 42)


# --- fuzz: anything in, a book or MalformedPayloadError out -------------------------------------------------------

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

texts = st.text(max_size=30)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and Infinity too: json.dumps writes them as the non-JSON literals NaN / Infinity
    | texts
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(texts, children, max_size=5),
    max_leaves=25,
)
number_like = st.one_of(
    st.integers(0, 10**6).map(str),
    st.decimals(min_value=0, max_value=10**6, places=8).map(lambda d: format(d, "f")),
    st.text(alphabet="0123456789.-+eE ", max_size=25),
    st.sampled_from(["0", "1", "00.1", "1e5", "NaN", "-1", "1.000000000000000000001"]),
)
# Branches listed twice weigh more: most generated frames should get past the envelope to the level checks.
levels = st.lists(
    st.one_of(
        st.tuples(number_like, number_like).map(list),
        st.tuples(number_like, number_like).map(list),
        st.lists(number_like | json_values, max_size=3),
    ),
    max_size=22,
)
good_streams = st.sampled_from(["btcusdt@depth5", "btcusdt@depth10@1000ms", "ethusdt@depth20@100ms"])
streams = good_streams | st.sampled_from(["btcusdt@depth@100ms", "btcusdt@trade", "BTCUSDT@depth5", ""])
payloads = st.fixed_dictionaries(
    {
        "lastUpdateId": st.integers(0, 2**63 - 1) | st.integers(-5, 2**64) | json_values,
        "bids": levels | levels | json_values,
        "asks": levels | levels | json_values,
    }
)
near_frames = st.one_of(
    st.fixed_dictionaries({"stream": good_streams, "data": payloads}),
    st.fixed_dictionaries({"stream": good_streams, "data": payloads}),
    st.fixed_dictionaries({"stream": streams}, optional={"data": payloads | json_values}),
    st.builds(
        lambda m, extra: {"stream": m["stream"], "data": {**m["data"], **extra}},
        st.fixed_dictionaries({"stream": good_streams, "data": payloads}),
        st.dictionaries(texts, json_values, max_size=2),
    ),
)


def _parse_or_reject(raw: str | bytes) -> None:
    try:
        book = parse(raw)
    except MalformedPayloadError:
        return
    assert isinstance(book, BookSnapshot)
    book_metrics(book)  # whatever the parser accepts, the metrics can handle


@FUZZ
@given(json_values)
def test_fuzz_arbitrary_json(value: object) -> None:
    _parse_or_reject(json.dumps(value, ensure_ascii=False))


@FUZZ
@given(streams, json_values)
def test_fuzz_valid_envelope_arbitrary_data(stream: str, data: object) -> None:
    _parse_or_reject(json.dumps({"stream": stream, "data": data}))


@FUZZ
@given(near_frames)
def test_fuzz_nearly_valid_frames(msg: dict[str, object]) -> None:
    _parse_or_reject(json.dumps(msg))


@FUZZ
@given(st.text() | st.binary())
def test_fuzz_arbitrary_text(raw: str | bytes) -> None:
    _parse_or_reject(raw)


# --- what parsing learned, handed on (BookSnapshot.numbers) -----------------------------------------------------


def test_parsed_book_carries_its_floats_and_scale() -> None:
    book = parse(make_frame(bids=[("100.50000000", "2.00000000")], asks=[("101.00000000", "0.10000000")]))
    numbers = book.numbers()
    assert numbers is not None
    assert (numbers.bid_prices, numbers.bid_quantities) == ((100.5,), (2.0,))
    assert (numbers.ask_prices, numbers.ask_quantities) == ((101.0,), (0.1,))
    assert numbers.scale == 8


@pytest.mark.parametrize(
    ("bids", "asks", "scale"),
    [
        ([("100.5", "2.0")], [("101.0", "1.5")], 1),
        ([("100", "2")], [], 0),
        ([], [("101.00", "1.00")], 2),
        ([("100.5", "2.00")], [], None),  # scales differ within a side
        ([("100.5", "2.0")], [("101.00", "1.00")], None),  # or between the sides
        ([], [], None),
    ],
)
def test_scale_is_known_only_when_every_value_shares_it(
    bids: list[tuple[str, str]], asks: list[tuple[str, str]], scale: int | None
) -> None:
    numbers = parse(make_frame(bids=bids, asks=asks)).numbers()
    assert numbers is not None and numbers.scale == scale


def test_what_parsing_learned_takes_no_part_in_equality_and_never_outlives_the_levels() -> None:
    book = parse(make_frame(bids=[("100.00000000", "1.00000000")], asks=[("101.00000000", "1.00000000")]))
    built = BookSnapshot(**{f: getattr(book, f) for f in BookSnapshot.__dataclass_fields__ if f != "parsed"})
    assert built == book and built.numbers() is None
    assert replace(book, received_ns=1).numbers() is book.numbers()
    moved = replace(book, bid_prices=("99.00000000",))
    assert moved.numbers() is None  # the floats of the old prices must not be taken for the new ones


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 10**20 - 1), st.integers(1, 10**20 - 1)).map(lambda t: f"{t[0]}.{t[1]:020d}"),
        min_size=2,
        max_size=2,
    ),
    st.integers(1, 20),
)
def test_floats_handed_on_are_float_of_each_value(pair: list[str], decimals: int) -> None:
    # One scale on every value: the parser reads the floats in one orjson call, which must round as float() does.
    price, qty = (v[: len(v) - 20 + decimals] for v in pair)
    if float(price) == 0.0 or float(qty) == 0.0:
        return
    numbers = parse(make_frame(bids=[(price, qty)], asks=[(price, qty)])).numbers()
    assert numbers is not None and numbers.scale == decimals
    assert numbers.bid_prices == numbers.ask_prices == (float(price),)
    assert numbers.bid_quantities == numbers.ask_quantities == (float(qty),)
