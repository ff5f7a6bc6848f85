"""workers.storage pure parts: COPY text rows in models.tables column order (levels in models.encoding's form), and
ns -> timestamptz text."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.book import BookSnapshot, parse_frame
from models.encoding import decode_column
from models.metrics import book_metrics
from models.tables import book_snapshots
from tests.factories import RECEIVED_NS, depth_samples, make_book
from workers.storage import clean_text, copy_text, ns_to_timestamp, to_rows

pytestmark = pytest.mark.unit

COLUMNS = [c.name for c in book_snapshots.columns]
NULL = "\\N"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def row_of(book: BookSnapshot, *, exchange: str = "binance") -> dict[str, str]:
    """The single COPY line for `book`, split into fields and keyed by the table's column names."""
    text = to_rows([(book, book_metrics(book))], exchange=exchange)
    assert text.endswith("\n") and text.count("\n") == 1
    fields = text[:-1].split("\t")
    assert len(fields) == len(COLUMNS)
    return dict(zip(COLUMNS, fields, strict=True))


def test_columns_are_the_table_columns() -> None:
    # If a column is added to or moved in models.tables, this list (and to_rows) must follow.
    assert COLUMNS == [
        "received_at",
        "last_update_id",
        "bid_vwap",
        "ask_vwap",
        "price",
        "depth",
        "scale",
        "crossed",
        "exchange",
        "symbol",
        "bid_prices",
        "bid_quantities",
        "ask_prices",
        "ask_quantities",
    ]


def test_fixture_frame_row() -> None:
    book = parse_frame(depth_samples()[0], received_ns=RECEIVED_NS)
    m = book_metrics(book)
    row = row_of(book)
    assert row == {
        "received_at": "2023-11-14 22:13:20.123456+00",
        "last_update_id": "11719214114",
        "bid_vwap": repr(m.bid_vwap),
        "ask_vwap": repr(m.ask_vwap),
        "price": repr(m.price),
        "depth": "5",
        "scale": "8",
        "crossed": "f",
        "exchange": "binance",
        "symbol": "BTCUSDT",
        # models.encoding: 40069.98000000, 40067.04000000, ... and 0.00002300, 0.06000000, ...
        "bid_prices": "6,4006998,294,295,390,391",
        "bid_quantities": "2,23,60000,37432,130197,247994",
        "ask_prices": "6,4006999,291,311,312,330",
        "ask_quantities": "2,1324924,999,205014,310000,61584",
    }


@pytest.mark.parametrize("raw", depth_samples())
def test_rows_keep_levels_exactly_and_floats_round_trip(raw: str) -> None:
    book = parse_frame(raw, received_ns=RECEIVED_NS)
    m = book_metrics(book)
    row = row_of(book)
    scale = int(row["scale"])
    assert decode_column(row["bid_prices"], scale=scale, price_direction=-1) == list(book.bid_prices)
    assert decode_column(row["bid_quantities"], scale=scale, price_direction=0) == list(book.bid_quantities)
    assert decode_column(row["ask_prices"], scale=scale, price_direction=1) == list(book.ask_prices)
    assert decode_column(row["ask_quantities"], scale=scale, price_direction=0) == list(book.ask_quantities)
    assert (float(row["bid_vwap"]), float(row["ask_vwap"]), float(row["price"])) == (m.bid_vwap, m.ask_vwap, m.price)


@pytest.mark.parametrize(
    ("bids", "asks", "nulls"),
    [
        ([("100", "1"), ("99", "3")], [], {"ask_vwap", "price"}),
        ([], [("101", "2")], {"bid_vwap", "price"}),
        ([], [], {"bid_vwap", "ask_vwap", "price", "scale"}),
    ],
    ids=["bids-only", "asks-only", "empty"],
)
def test_one_sided_book_has_nulls(bids: list[tuple[str, str]], asks: list[tuple[str, str]], nulls: set[str]) -> None:
    row = row_of(make_book(bids=bids, asks=asks))
    assert {name for name, value in row.items() if value == NULL} == nulls
    assert row["crossed"] == "f"
    if not bids:
        assert row["bid_prices"] == row["bid_quantities"] == ""
    if not asks:
        assert row["ask_prices"] == row["ask_quantities"] == ""
    if bids:
        assert (row["bid_prices"], row["bid_quantities"], row["bid_vwap"]) == ("0,100,1", "0,1,3", "99.25")


def test_mixed_scales_are_written_as_sent() -> None:
    row = row_of(make_book(bids=[("100.5", "1"), ("99", "3.25")], asks=[]))
    assert (row["scale"], row["bid_prices"], row["bid_quantities"]) == (NULL, "100.5,99", "1,3.25")


def test_several_books_one_line_each() -> None:
    books = [make_book(last_update_id=i, received_ns=RECEIVED_NS + i * 1000) for i in range(3)]
    text = to_rows([(b, book_metrics(b)) for b in books], exchange="binance")
    lines = text.split("\n")
    assert lines[-1] == ""
    assert [line.split("\t")[1] for line in lines[:-1]] == ["0", "1", "2"]
    assert [line.split("\t")[0][-10:] for line in lines[:-1]] == [".123456+00", ".123457+00", ".123458+00"]


def test_no_books_no_text() -> None:
    assert to_rows([], exchange="binance") == ""


def test_exchange_is_written_as_given() -> None:
    assert row_of(make_book(), exchange="binance-us")["exchange"] == "binance-us"


# --- COPY text escaping -------------------------------------------------------------------------------------------


def copy_unescape(field: str) -> str | None:
    """Reference reader of one COPY text-format field, as PostgreSQL documents it: \\N alone is NULL; backslash +
    b f n r t v is that control character, + 1-3 octal digits or x + 1-2 hex digits that byte, + anything else that
    character."""
    if field == NULL:
        return None
    controls = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}

    def one(m: re.Match[str]) -> str:
        e = m.group(1)
        if e[0] in "01234567":
            return chr(int(e, 8))
        if e[0] == "x" and len(e) > 1:
            return chr(int(e[1:], 16))
        return controls.get(e, e)

    return re.sub(r"\\([0-7]{1,3}|x[0-9a-fA-F]{1,2}|.)", one, field, flags=re.DOTALL)


def test_hostile_exchange_cannot_add_columns_or_rows() -> None:
    # Before escaping, this exchange wrote its own symbol, depth, ... and a whole second row.
    forged = "x\tETHUSDT\t0,1\t0,1\t0,2\t0,1\n2023-11-14 00:00:00+00\t1\t1\t1\t1\t20\t0\tf\tbinance"
    row = row_of(make_book(), exchange=forged)
    assert copy_unescape(row["exchange"]) == forged
    assert row["symbol"] == "BTCUSDT"


@pytest.mark.parametrize("text", ["\\", "\\N", "\\.", "a\\tb", "\r\n", "\t", "\\x41", "\\101"])
def test_backslash_sequences_are_written_literally(text: str) -> None:
    field = copy_text(text)
    assert copy_unescape(field) == text
    assert field != NULL and "\t" not in field and "\n" not in field and "\r" not in field


# Any text at all, lone surrogates included, with COPY's special characters and NUL made frequent.
ANY_TEXT = st.text(st.characters(exclude_categories=()) | st.sampled_from("\\\t\n\r\x00\ud800N."))


@settings(max_examples=100, deadline=None)
@given(ANY_TEXT, ANY_TEXT)
def test_copy_text_round_trips_any_text(exchange: str, symbol: str) -> None:
    row = row_of(make_book(symbol=symbol), exchange=exchange)  # still one line of 16 fields (checked by row_of)
    assert copy_unescape(row["exchange"]) == clean_text(exchange)
    assert copy_unescape(row["symbol"]) == clean_text(symbol)
    assert clean_text(exchange) == exchange or "\x00" in exchange or not _encodable(exchange)


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("plain", "plain"),
        ("nul\x00byte", "nul\ufffdbyte"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        ("\udfff\x00\u20ac", "\\udfff\ufffd\u20ac"),
        ("caf\u00e9", "caf\u00e9"),
    ],
)
def test_clean_text_replaces_only_what_postgres_cannot_store(text: str, clean: str) -> None:
    assert clean_text(text) == clean
    clean.encode("utf-8")  # psycopg2 can send it


# --- ns_to_timestamp ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "1970-01-01 00:00:00.000000+00"),
        (999, "1970-01-01 00:00:00.000000+00"),  # truncated, not rounded
        (1_999, "1970-01-01 00:00:00.000001+00"),
        (999_999_999, "1970-01-01 00:00:00.999999+00"),  # never rounds into the next second
        (RECEIVED_NS, "2023-11-14 22:13:20.123456+00"),
        (1_704_067_199_999_999_999, "2023-12-31 23:59:59.999999+00"),
        (1_704_067_200_000_000_000, "2024-01-01 00:00:00.000000+00"),
    ],
)
def test_ns_to_timestamp(ns: int, text: str) -> None:
    assert ns_to_timestamp(ns) == text


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=4_102_444_800 * 10**9))  # up to 2100-01-01
def test_ns_to_timestamp_truncates_to_the_microsecond_in_utc(ns: int) -> None:
    text = ns_to_timestamp(ns)
    expected = EPOCH + timedelta(microseconds=ns // 1000)
    assert text == expected.strftime("%Y-%m-%d %H:%M:%S.%f") + "+00"
    parsed = datetime.fromisoformat(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


def test_ns_to_timestamp_ignores_the_local_timezone(monkeypatch: pytest.MonkeyPatch) -> None:
    ns = 1_719_792_000_500_000_000  # 2024-07-01 00:00:00.5 UTC: a DST date in both zones below
    try:
        for tz in ("America/New_York", "Asia/Kolkata"):
            monkeypatch.setenv("TZ", tz)
            time.tzset()
            assert ns_to_timestamp(ns + 10**9 * len(tz)) == f"2024-07-01 00:00:{len(tz):02d}.500000+00"
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("raw", depth_samples())
def test_rows_of_parsed_books_are_those_of_their_strings(raw: str) -> None:
    # A parsed book is encoded without checking its values again (models.encoding.encode_uniform): same text.
    parsed = parse_frame(raw, received_ns=RECEIVED_NS)
    assert parsed.numbers() is not None and parsed.numbers().scale is not None  # type: ignore[union-attr]
    plain = make_book(
        bids=list(zip(parsed.bid_prices, parsed.bid_quantities, strict=True)),
        asks=list(zip(parsed.ask_prices, parsed.ask_quantities, strict=True)),
        last_update_id=parsed.last_update_id,
        symbol=parsed.symbol,
        depth=parsed.depth,
    )
    assert row_of(parsed) == row_of(plain)
