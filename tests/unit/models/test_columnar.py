"""models.columnar, the batch fast path: on any batch, valid or broken, it stores and rejects exactly what the
per-frame path (models.book.parse_frame + models.metrics + models.encoding) does, with the same reasons, the same
floats and the same encoded text; and it takes every real-shaped book itself."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.book import parse_frame
from models.columnar import parse_columns
from models.live import live_item, live_items
from models.messages import make_batch
from models.metrics import book_metrics
from tests.factories import RECEIVED_NS, depth_samples, make_frame
from tests.unit.models.test_book import BAD_NUMBERS
from workers import storage
from workers.envelope import ParsedBatch, parse_batch

pytestmark = pytest.mark.unit


def _canonical_rows(text: str) -> list[tuple[Any, ...]]:
    """COPY lines as comparable values: the time in either UTC spelling, floats as floats (PostgreSQL reads both
    spellings of one float8 alike)."""
    out = []
    for line in text.splitlines():
        ts, luid, bv, av, price, *rest = line.split("\t")
        assert ts.endswith(("Z", "+00")), f"a time without its zone is read in the session's: {ts}"
        ts = ts.removesuffix("Z").removesuffix("+00")
        floats = tuple(None if v == "\\N" else float(v) for v in (bv, av, price))
        out.append((ts, luid, *floats, *rest))
    return sorted(out, key=repr)


def _outcome(batch: ParsedBatch) -> tuple[list[tuple[Any, ...]], list[tuple[int, str, str]]]:
    rows = storage.to_rows(batch.books, exchange=batch.exchange)
    if batch.columns is not None:
        rows += storage.columns_to_rows(batch.columns, exchange=batch.exchange).decode("ascii")
    rejected = sorted((r.received_ns, r.reason, r.raw) for r in batch.rejected)
    return _canonical_rows(rows), rejected


def assert_same(frames: list[str]) -> ParsedBatch:
    """Both paths on one batch of `frames`: the same rows and rejections; returns the fast path's batch."""
    payload = make_batch(batch_id="b", frames=[(RECEIVED_NS + i, f) for i, f in enumerate(frames)])
    payload = json.loads(json.dumps(payload))
    fast, slow = parse_batch(payload), parse_batch(payload, fast=False)
    assert slow.columns is None
    assert fast.n_books == slow.n_books == len(slow.books)
    assert _outcome(fast) == _outcome(slow)
    return fast


def _frame(data: dict[str, Any], stream: str = "btcusdt@depth20@100ms") -> str:
    return orjson.dumps({"stream": stream, "data": data}).decode()


def _book(rnd: random.Random, *, scale: int = 8, levels: int = 20, big: bool = False) -> dict[str, Any]:
    mid = rnd.randint(10**scale, 10 ** (scale + (12 if big else 6)))
    tick = 10 ** rnd.randint(0, scale)

    def text(m: int) -> str:
        d = str(m).rjust(scale + 1, "0")
        return f"{d[:-scale]}.{d[-scale:]}"

    bids, asks, b, a = [], [], mid, mid + tick
    for _ in range(levels):
        bids.append([text(b), text(rnd.randint(1, 10 ** (scale + 4)))])
        asks.append([text(a), text(rnd.randint(1, 10 ** (scale + 4)))])
        b -= tick * rnd.randint(1, 5)
        a += tick * rnd.randint(1, 5)
    return {"lastUpdateId": rnd.randint(0, 2**63 - 1), "bids": bids, "asks": asks}


def test_real_frames_are_all_taken_by_the_fast_path() -> None:
    samples = [s for s in depth_samples() if "@depth" in json.loads(s)["stream"]]
    batch = assert_same(samples)
    assert batch.columns is not None
    assert len(batch.columns) == len(samples) and not batch.books and not batch.rejected


def test_real_shaped_books_of_any_scale_and_depth_agree() -> None:
    rnd = random.Random(7)
    frames = [
        _frame(_book(rnd, scale=rnd.randint(1, 8), levels=rnd.randint(1, 20)), f"s{k % 7}usdt@depth20")
        for k in range(300)
    ]
    frames += [_frame(_book(rnd, levels=5), "ethusdt@depth5"), _frame(_book(rnd, levels=10), "bnbusdt@depth10")]
    batch = assert_same(frames)
    assert batch.columns is not None and len(batch.columns) == len(frames)


def test_books_the_fast_path_leaves_alone_are_stored_all_the_same() -> None:
    """Values an int64 cannot hold, integers without a point, mixed scales, an empty side: the per-frame path takes
    them."""
    rnd = random.Random(3)
    wide = _book(rnd, scale=8, big=True)  # prices of 19-21 digits
    over = {"lastUpdateId": 4, "bids": [["92233720368.54775808", "1.00000000"]], "asks": [["92233720369.0", "1.0"]]}
    twenty = {"lastUpdateId": 5, "bids": [["9.9999999999999999999", "1.0"]], "asks": [["10.0", "1.0"]]}
    no_point = {"lastUpdateId": 1, "bids": [["100", "2"]], "asks": [["101", "3"]]}
    mixed = {"lastUpdateId": 2, "bids": [["100.5", "2.25"]], "asks": [["101.50", "3.00"]]}
    empty_side = {"lastUpdateId": 3, "bids": [], "asks": [["101.00000000", "3.00000000"]]}
    frames = [_frame(d) for d in (wide, over, twenty, no_point, mixed, empty_side)] + [_frame(_book(rnd))]
    batch = assert_same(frames)
    assert batch.columns is not None and len(batch.columns) == 1 and len(batch.books) == 6


def test_values_of_19_digits_an_int64_holds_take_the_fast_path() -> None:
    """The cheapest coins' quantities (13124238092.00000000: 19 digits) and prices up to 2^63 - 1 once the point is
    out are scaled integers like any other: the books are taken, with the per-frame path's results."""
    rnd = random.Random(23)
    data = _book(rnd)
    frames = []
    for qty in ("13124238092.00000000", "92233720368.54775807", "9223372036.854775807", "1000000000.000000000"):
        scale = len(qty.split(".")[1])
        levels = [[f"{p}.{'1' * scale}", qty] for p in (5, 4, 3)]
        frames.append(_frame({**data, "bids": levels, "asks": [[f"6.{'0' * scale}", qty]]}))
    batch = assert_same(frames)
    assert batch.columns is not None and len(batch.columns) == len(frames) and not batch.books


def _mutations(good: str) -> list[str]:
    data = json.loads(good)["data"]
    out = [
        good + "x",
        good + good,
        "",
        "   ",
        "[1, 2]",
        "null",
        good.replace('"stream"', '"Stream"'),
        good.replace("@depth20", "@depth7"),
        good.replace("btcusdt", "BTCUSDT"),
        good.replace('"lastUpdateId":', '"lastUpdateId":-'),
        good.replace('"lastUpdateId":', '"lastUpdateId":1.5,"x":'),
        good.replace('"lastUpdateId":', '"E":1,"lastUpdateId":'),
        good.replace('"lastUpdateId":', '"lastUpdateId":1,"lastUpdateId":'),
        good.replace('"data":', '"stream":"btcusdt@depth20","data":'),
        good.replace('"bids":[[', '"bids":[null,['),
        good.replace('"bids":[[', '"bids":[["1.00000000"],['),
        good.replace('"bids":[[', '"bids":[["9.00000000","1.00000000","2"],['),
        good.replace('"asks":[[', '"asks":[[1.5,"1"],['),
        good.replace('"asks":', '"asks":null,"x":'),
        good.replace("{", "{\n", 1),
        good.replace("{", "\r{", 1),
        good.replace("0", "\\u0030", 1),
        "\ufeff" + good,
        good.replace('"bids":[', '"bids":[["1' + "0" * 70 + '.0","1.0"],', 1),
        _frame({**data, "bids": data["bids"] + data["bids"][:1]}),  # out of order
        _frame({**data, "asks": data["asks"][:1] + data["asks"]}),  # duplicate price
        _frame({**data, "bids": data["bids"] * 2}),  # more levels than the depth
        _frame({**data, "asks": [[data["asks"][0][0], "0.00000000"]]}),  # zero quantity
        _frame({**data, "bids": [["0.00000000", "1.00000000"]]}),  # zero price
        _frame({**data, "bids": data["asks"], "asks": data["bids"][::-1][-3:]}),  # crossed
        _frame({**data, "bids": []}, "btcusdt@depth5"),
        # Every value too wide for the fast path and with more trailing zeros than an int64 has digits.
        _frame(
            {**data, "bids": [["1" + "0" * 22 + ".0", "1" + "0" * 21 + ".0"]], "asks": [["2" + "0" * 22 + ".0", "3.0"]]}
        ),
    ]
    for bad in BAD_NUMBERS:
        for k in range(4):
            side = "bids" if k < 2 else "asks"
            levels = [list(level) for level in data[side]]
            levels[len(levels) // 2][k % 2] = bad
            out.append(_frame({**data, side: levels}))
    return out


def test_broken_frames_among_good_ones_get_the_same_reasons() -> None:
    rnd = random.Random(11)
    good = [_frame(_book(rnd)) for _ in range(40)]
    broken = _mutations(good[0])
    mixed = good + broken
    rnd.shuffle(mixed)
    batch = assert_same(mixed)
    assert batch.columns is not None and len(batch.columns) >= len(good)


def test_a_batch_of_nothing_but_broken_frames() -> None:
    rnd = random.Random(5)
    batch = assert_same(_mutations(_frame(_book(rnd))))
    assert batch.rejected


def test_text_that_is_not_utf8_encodable_goes_to_the_per_frame_path() -> None:
    rnd = random.Random(9)
    frames = [_frame(_book(rnd)), make_frame().replace("btcusdt", "btc\ud800usdt")]
    assert_same(frames)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_fuzz_values_both_paths_agree(data: st.DataObject) -> None:
    """Books of random values: scales, widths, leading zeros, zeros, ties, signs; any mix per book."""
    value = st.one_of(
        st.from_regex(r"(?:0|[1-9][0-9]{0,12})\.[0-9]{1,9}", fullmatch=True),
        st.from_regex(r"[0-9]{1,22}(?:\.[0-9]{0,22})?", fullmatch=True),
        st.sampled_from(BAD_NUMBERS),
    )
    level = st.tuples(value, value).map(list)
    books = data.draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "lastUpdateId": st.integers(min_value=0, max_value=2**63 - 1),
                    "bids": st.lists(level, max_size=6),
                    "asks": st.lists(level, max_size=6),
                }
            ),
            min_size=1,
            max_size=12,
        )
    )
    frames = [_frame(b, "xrpusdt@depth5") for b in books]
    # Sort some sides so that ordered books reach the fast path too.
    for b in books:
        b["bids"] = sorted(b["bids"], key=lambda lv: -float(lv[0]) if _plain(lv[0]) else 0.0)
        b["asks"] = sorted(b["asks"], key=lambda lv: float(lv[0]) if _plain(lv[0]) else 0.0)
    frames += [_frame(b, "xrpusdt@depth10") for b in books]
    assert_same(frames)


def _plain(v: str) -> bool:
    return v.replace(".", "", 1).isdigit() and v.isascii()


def test_parse_columns_leaves_every_frame_it_cannot_read() -> None:
    cols, left = parse_columns([(RECEIVED_NS, "not json"), (RECEIVED_NS, make_frame())])
    assert cols.taken == [1] and left == [0]
    cols, left = parse_columns([])
    assert len(cols) == 0 and left == []


def test_live_items_of_the_fast_path_are_those_of_the_per_frame_path() -> None:
    rnd = random.Random(13)
    frames = [_frame(_book(rnd, scale=rnd.randint(1, 8), levels=rnd.randint(1, 20))) for _ in range(50)]
    data = json.loads(frames[0])["data"]
    frames.append(_frame({**data, "bids": data["asks"][:3][::-1], "asks": data["bids"][:3][::-1]}))  # crossed
    frames.append(_frame({**data, "bids": data["asks"][:1], "asks": data["asks"][:1]}))  # spread 0
    frames += [s for s in depth_samples() if "@depth" in json.loads(s)["stream"]]
    items = [(RECEIVED_NS + i, f) for i, f in enumerate(frames)]
    cols, left = parse_columns(items)
    assert not left
    slow = [parse_frame(raw, received_ns=ns) for ns, raw in items]
    assert live_items("binance", cols) == [live_item("binance", b, book_metrics(b)) for b in slow]


def test_a_failing_fast_path_costs_cpu_never_a_batch(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from workers import envelope

    def broken(_: object) -> None:
        raise IndexError("a defect in the fast path")

    frames = [_frame(_book(random.Random(1)))]
    payload = make_batch(batch_id="b", frames=[(RECEIVED_NS, frames[0])])
    monkeypatch.setattr(envelope, "parse_columns", broken)
    with caplog.at_level("ERROR", logger="workers.envelope"):
        batch = parse_batch(payload)
    assert batch.columns is None and len(batch.books) == 1 and not batch.rejected
    assert "the batch fast path failed" in caplog.text


def test_each_value_becomes_the_float_that_float_gives() -> None:
    """One-level books with a quantity of 1 show each price's float itself (p * 1 / 1): integers up to 2^53 over their
    power of ten, and the wider values (up to 19 digits, 2^63 - 1) cast from text, both equal float() of the text,
    around 2^53 too."""
    rnd = random.Random(53)
    digits = [str(2**53 + d) for d in (-2, -1, 0, 1, 2, 3)] + ["1" * 18, "9" * 18, "1" + "0" * 17]
    digits += [str(2**63 - d) for d in (1, 2, 1000)] + ["1" * 19, "1" + "0" * 18]
    digits += [str(rnd.randint(1, 10 ** rnd.randint(1, 18) - 1)) for _ in range(3000)]
    digits += [str(rnd.randint(10**18, 2**63 - 1)) for _ in range(300)]
    values = []
    for d in digits:
        scale = rnd.randint(1, min(17, len(d)))
        whole = d[:-scale].lstrip("0") or "0"
        values.append((f"{whole}.{d[-scale:]}", scale))
    one = {s: "1." + "0" * s for s in range(1, 18)}
    # The ask at the bid's price: a crossed book, stored and flagged like any other.
    frames = [
        _frame({"lastUpdateId": i, "bids": [[v, one[s]]], "asks": [[v, one[s]]]}) for i, (v, s) in enumerate(values)
    ]
    cols, _ = parse_columns([(RECEIVED_NS + i, f) for i, f in enumerate(frames)])
    taken = {i: k for k, i in enumerate(cols.taken)}
    assert len(taken) == len(values)
    for i, k in taken.items():
        assert cols.bid_vwap[k] == float(values[i][0]), values[i][0]
    assert_same(frames)


def _given_to_the_json_reader(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The frames parse_columns hands to the JSON reader (its own calls on the parts it refuses not counted)."""
    from models import columnar

    given: list[int] = []
    reader = columnar._read

    def first_call(frames: Any, idx: list[int], tables: Any, read: Any) -> None:
        monkeypatch.setattr(columnar, "_read", reader)
        given.extend(idx)
        reader(frames, idx, tables, read)

    monkeypatch.setattr(columnar, "_read", first_call)
    return given


def test_frames_spelled_as_binance_spells_them_skip_the_json_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compact frames in Binance's key order are cut into tokens (models.columnar._tokenize): the JSON reader gets
    none of them, and the books are those of the per-frame path."""
    read_by_reader = _given_to_the_json_reader(monkeypatch)
    rnd = random.Random(17)
    frames = [s for s in depth_samples() if "@depth" in json.loads(s)["stream"]]
    frames += [_frame(_book(rnd, scale=rnd.randint(1, 8), levels=rnd.randint(1, 20))) for _ in range(100)]
    batch = assert_same(frames)
    assert batch.columns is not None and len(batch.columns) == len(frames)
    assert read_by_reader == []


def test_the_same_books_spelled_otherwise_go_to_the_json_reader_and_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spaces, another key order, escapes, ids the template cannot take as they are: the JSON reader (or the
    per-frame path) reads them, with the same results; the books keep the order they came in."""
    read_by_reader = _given_to_the_json_reader(monkeypatch)
    rnd = random.Random(19)
    data = _book(rnd)
    good = _frame(data)
    spelled_otherwise = [
        json.dumps({"stream": "btcusdt@depth20", "data": data}),  # spaces after ':' and ','
        json.dumps({"data": data, "stream": "btcusdt@depth20"}, separators=(",", ":")),  # key order
        orjson.dumps({"stream": "btcusdt@depth20", "data": {"bids": data["bids"], **data}}).decode(),
        good.replace('"bids"', '"\\u0062ids"'),  # an escaped key
        good.replace(data["bids"][0][0], data["bids"][0][0].replace("1", "\\u0031"), 1),  # an escaped digit
        good.replace('"lastUpdateId":', '"lastUpdateId":0'),  # a leading zero: not JSON
        good.replace(f'"lastUpdateId":{data["lastUpdateId"]}', '"lastUpdateId":9223372036854775808'),  # > int64
        good.replace(f'"lastUpdateId":{data["lastUpdateId"]}', '"lastUpdateId":9223372036854775807'),
        good.replace(f'"lastUpdateId":{data["lastUpdateId"]}', '"lastUpdateId":0'),
        good.replace(f'"lastUpdateId":{data["lastUpdateId"]}', '"lastUpdateId":12.0'),
        good.replace(f'"lastUpdateId":{data["lastUpdateId"]}', '"lastUpdateId":'),
        good.replace('"btcusdt@depth20@100ms"', '"btc.usdt@depth20"'),
        good.replace('"btcusdt@depth20@100ms"', '"1000satsusdt@depth20"'),
        good.replace('"btcusdt@depth20@100ms"', '"btcusdt@depth20"'),
        good.replace('"btcusdt@depth20@100ms"', '"BTCUSDT@depth20"'),
        good.replace('"bids":[[', '"bids":[["",""],['),
    ]
    assert good not in spelled_otherwise and len(set(spelled_otherwise)) == len(spelled_otherwise)
    frames = []
    for k, bad in enumerate(spelled_otherwise):  # each among good ones, so that both readers share the batch
        frames += [_frame(_book(rnd)), bad] if k % 2 else [bad, _frame(_book(rnd))]
    batch = assert_same(frames)
    assert batch.columns is not None and batch.columns.taken == sorted(batch.columns.taken)
    # The template takes the largest int64, 0, any name of letters, digits, points and '@' (parse_stream_name judges
    # it), and empty values (the grammar checks judge them); nothing else that is not Binance's own spelling.
    not_template = {0, 1, 2, 3, 4, 5, 6, 9, 10, 14}
    assert sorted(read_by_reader) == sorted(2 * k + k % 2 for k in not_template)


def test_points_are_taken_out_as_arrow_replace_and_find_would() -> None:
    """models.columnar._points_out reads the array's buffers: a slice (an offset into them), nulls, empty values and
    values with no point, several, or one at either end agree with Arrow's replace_substring and find_substring."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from models.columnar import _points_out

    rnd = random.Random(29)
    alphabet = "0123456789.."
    values: list[str | None] = ["", ".", "..", "1.", ".5", "12", "1.2.3", None, "é.1", "40069.98000000"]
    values += ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 22))) for _ in range(2_000)]
    whole = pa.array(["9.9", *values, "1.0"], pa.string())
    # One point in every value (the search-free case), and as many points as values but not one each.
    one_each = pa.array(["0.5", "12.25", "1.", ".7", "3.000"] * 3, pa.string())
    as_many = pa.array(["1.5", "1..2", "7", "0.25", "3."], pa.string())
    for array in (whole, whole.slice(1, len(values)), whole.slice(3, 5), whole.slice(0, 0), one_each, as_many):
        digits, length, points, point, zero_first = _points_out(array)
        plain = pc.fill_null(array, "")
        assert digits.to_pylist() == pc.replace_substring(plain, ".", "").to_pylist()
        assert length.tolist() == pc.binary_length(plain).to_pylist()
        assert point.tolist() == pc.find_substring(plain, ".").to_pylist()
        assert points.tolist() == [v.count(".") for v in plain.to_pylist()]
        assert zero_first.tolist() == [v.startswith("0") for v in plain.to_pylist()]


def test_digits_and_points_outside_the_values_id_and_name_go_to_the_json_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The template is matched with every digit and point taken out, so it cannot see where they were: one in a key,
    around the id, between the strings or after the frame makes another key, another value or no JSON at all. The
    tokenizer leaves such frames to the JSON reader (which refuses them all); the results are the per-frame path's."""
    read_by_reader = _given_to_the_json_reader(monkeypatch)
    rnd = random.Random(31)
    data = _book(rnd, levels=3)
    good = _frame(data)
    luid = f'"lastUpdateId":{data["lastUpdateId"]},'
    stray = [
        good.replace('{"stream"', '{5"stream"'),
        good.replace('"stream"', '"str1eam"'),
        good.replace('"data"', '"da.ta"'),
        good.replace(luid, luid.replace(":", "1:")),
        good.replace(luid, luid.replace(",", ",7")),
        good.replace('"bids":[', '"bids":5['),
        good.replace('"bids":[[', '"bids":[[.'),
        good.replace('"],["', '"]5,["', 1),
        good.replace('","', '"9,"', 3),
        good.replace('"asks":[[', '"asks":[[0'),
        good + "1",
    ]
    assert len(set(stray)) == len(stray) and good not in stray
    frames = []
    for k, bad in enumerate(stray):
        frames += [_frame(_book(rnd)), bad] if k % 2 else [bad, _frame(_book(rnd))]
    batch = assert_same(frames)
    assert batch.columns is not None and len(batch.columns) == len(stray)
    assert sorted(read_by_reader) == [2 * k + k % 2 for k in range(len(stray))]
