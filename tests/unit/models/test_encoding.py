"""models.encoding: any book the parser admits encodes compactly and decodes to exactly the strings sent."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from models.book import parse_frame
from models.encoding import EncodedLevels, decode_column, encode_levels, encode_uniform
from models.errors import MalformedPayloadError
from tests.factories import RECEIVED_NS, depth_samples, make_frame

pytestmark = pytest.mark.unit

Columns = tuple[list[str], list[str], list[str], list[str]]


def round_trip(bp: list[str], bq: list[str], ap: list[str], aq: list[str]) -> EncodedLevels:
    enc = encode_levels(bp, bq, ap, aq)
    assert decode_column(enc.bid_prices, scale=enc.scale, price_direction=-1) == bp
    assert decode_column(enc.bid_quantities, scale=enc.scale, price_direction=0) == bq
    assert decode_column(enc.ask_prices, scale=enc.scale, price_direction=1) == ap
    assert decode_column(enc.ask_quantities, scale=enc.scale, price_direction=0) == aq
    return enc


def decimal_text(mantissa: int, scale: int) -> str:
    digits = str(mantissa).rjust(scale + 1, "0")
    return f"{digits[:-scale]}.{digits[-scale:]}" if scale else digits


# What models.book admits: no sign or exponent, no leading zero, at most 20 digits either side of the point.
MANTISSA = st.integers(min_value=0, max_value=10**20 - 1)


@st.composite
def uniform_books(draw: st.DrawFn, *, zero_quantities: bool = True) -> tuple[int, Columns]:
    """Books whose values all have one scale (as Binance sends them), of any depth and sides of any length."""
    scale = draw(st.integers(min_value=0, max_value=20))
    # Mantissas with many trailing zeros are frequent, as real ticks and lot sizes make them.
    shift = st.integers(min_value=0, max_value=scale + 20)
    value = st.builds(lambda m, z: decimal_text(min(m * 10**z, 10 ** (20 + scale) - 1), scale), MANTISSA, shift)
    qty = value if zero_quantities else value.filter(lambda v: v.strip("0.") != "")
    n_bids, n_asks = draw(st.integers(0, 20)), draw(st.integers(0, 20))
    bids = sorted(set(draw(st.lists(value, min_size=n_bids, max_size=n_bids))), key=lambda v: -float(v))
    asks = sorted(set(draw(st.lists(value, min_size=n_asks, max_size=n_asks))), key=float)
    bq = draw(st.lists(qty, min_size=len(bids), max_size=len(bids)))
    aq = draw(st.lists(qty, min_size=len(asks), max_size=len(asks)))
    return scale, (bids, bq, asks, aq)


@settings(max_examples=250, deadline=None)
@given(uniform_books())
def test_uniform_scale_books_round_trip_exactly_and_compactly(case: tuple[int, Columns]) -> None:
    scale, cols = case
    enc = round_trip(*cols)
    assert enc.scale == (scale if any(cols) else None)


PLAIN = st.builds(
    lambda whole, frac: str(whole) + (f".{frac}" if frac else ""),
    MANTISSA,
    st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=20)),
)


@settings(max_examples=250, deadline=None)
@given(st.lists(st.lists(PLAIN, max_size=20), min_size=4, max_size=4))
def test_any_plain_decimals_round_trip_exactly_in_any_order(cols: list[list[str]]) -> None:
    # Scales mixed or not, levels in any order (make_book skips the parser): each value comes back as sent.
    round_trip(*cols)


def test_real_frames_are_stored_as_scaled_integers() -> None:
    for raw in depth_samples():
        book = parse_frame(raw, received_ns=RECEIVED_NS)
        enc = round_trip(
            list(book.bid_prices), list(book.bid_quantities), list(book.ask_prices), list(book.ask_quantities)
        )
        assert enc.scale == 8
        sent = sum(
            len(",".join(c)) for c in (book.bid_prices, book.bid_quantities, book.ask_prices, book.ask_quantities)
        )
        assert len(enc.bid_prices + enc.bid_quantities + enc.ask_prices + enc.ask_quantities) < sent / 2


def test_format_of_a_real_book() -> None:
    # The documented format: "k,best,distance,..." for prices, "k,v,..." for quantities, value = v * 10^(k - scale).
    book = parse_frame(depth_samples()[0], received_ns=RECEIVED_NS)
    enc = encode_levels(book.bid_prices, book.bid_quantities, book.ask_prices, book.ask_quantities)
    assert enc == EncodedLevels(
        scale=8,
        bid_prices="6,4006998,294,295,390,391",  # 40069.98000000, 40067.04000000, ...: a tick of 0.01
        bid_quantities="2,23,60000,37432,130197,247994",  # 0.00002300, 0.06000000, ...
        ask_prices="6,4006999,291,311,312,330",
        ask_quantities="2,1324924,999,205014,310000,61584",
    )


@pytest.mark.parametrize(
    "cols",
    [
        (["40069.98000000"], ["0.00002300"], ["40069.99000000"], ["1.00000000"]),  # trailing zeros kept
        (["0.00000000"], ["0.00000000"], ["0"], ["0"]),  # zeros, in two scales
        (["0"], ["0"], ["0"], ["0"]),
        (["0.00000001", "0"], ["10", "0"], [], []),  # a zero beside values with trailing zeros
        (["99999999999999999999.99999999999999999999"], ["0.00000000000000000001"], [], []),  # 40 digits
        (["100000000000000000000"[:20], "10"], ["1", "100"], ["20000000000000000000"], ["3"]),  # scale 0, k = 1..19
        (["5.0", "4.5"], ["1.00", "2"], [], []),  # mixed scales: stored as sent
        ([], [], [], []),  # an empty book
        ([], [], ["1.5"], ["2.5"]),  # one side empty
        (["3.1", "2.2", "1.3", "0.4", "0.3"], ["1.0"] * 5, [f"{3.5 + i}" for i in range(10)], ["0.1"] * 10),
        (["1.0", "2.0"], ["1.0", "1.0"], ["3.0", "2.0"], ["1.0", "1.0"]),  # out of order (make_book): still exact
    ],
    ids=[
        "trailing-zeros",
        "zeros",
        "zero-scale-0",
        "zero-beside",
        "40-digits",
        "scale-0",
        "mixed",
        "empty",
        "one-sided",
        "depth5-vs-10",
        "unordered",
    ],
)
def test_edge_books_round_trip(cols: Columns) -> None:
    round_trip(*cols)


@pytest.mark.parametrize("depth", [5, 10, 20])
def test_depths_round_trip(depth: int) -> None:
    bids = [f"{40000 - 0.01 * i * (i + 1):.8f}" for i in range(depth)]
    asks = [f"{40000.01 + 0.1 * i:.8f}" for i in range(depth // 2)]  # asymmetric sides
    enc = round_trip(bids, [f"{0.5 * (i + 1):.8f}" for i in range(depth)], asks, ["1.00000000"] * len(asks))
    assert enc.scale == 8


@pytest.mark.parametrize(
    "values",
    [["007"], ["01.50"], ["1.50", "02.50"]],
    ids=["leading-zero", "leading-zero-decimal", "one-of-two"],
)
def test_non_canonical_values_are_kept_as_sent(values: list[str]) -> None:
    # The parser never admits them; were one given, the integer form would lose its leading zero.
    enc = round_trip(values, ["1"] * len(values), [], [])
    assert enc.scale is None


@pytest.mark.parametrize("bad", ["1e5", "-1", "1.", ".5", "NaN", "1,2", " 1", "1_000", "{1}", ""])
def test_anything_else_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a plain decimal"):
        encode_levels(["1.5", bad], ["1.0", "1.0"], [], [])


# --- encode_uniform: what parse_frame already checked is not checked again ----------------------------------------


@settings(max_examples=250, deadline=None)
@given(uniform_books())
def test_encode_uniform_is_encode_levels_for_uniform_books(case: tuple[int, Columns]) -> None:
    scale, cols = case
    if any(cols):
        assert encode_uniform(*cols, scale=scale) == encode_levels(*cols)


@settings(max_examples=150, deadline=None)
@given(uniform_books(zero_quantities=False))
def test_parsed_books_carry_the_scale_encode_uniform_needs(case: tuple[int, Columns]) -> None:
    _, (bp, bq, ap, aq) = case
    frame = make_frame(bids=list(zip(bp, bq, strict=True)), asks=list(zip(ap, aq, strict=True)))
    try:
        book = parse_frame(frame, received_ns=RECEIVED_NS)
    except MalformedPayloadError:  # a zero price, or two prices float() ties in the wrong exact order
        assume(False)
    numbers = book.numbers()
    assert numbers is not None
    expected = encode_levels(bp, bq, ap, aq)
    assert numbers.scale == expected.scale
    if numbers.scale is not None:
        assert encode_uniform(bp, bq, ap, aq, scale=numbers.scale) == expected


@pytest.mark.parametrize(
    "cols",
    [
        (["3.00"], ["0.00"], ["2.50"], ["1.00"]),  # a zero quantity: the trailing zeros come from the others
        (["300"], ["0"], ["400"], ["1000"]),
        (["1" + "0" * 40], ["1" + "0" * 39], [], []),  # more trailing zeros than the text path counts
        (["10.10"], ["20.00"], ["10.20"], ["0.10"]),
    ],
)
def test_encode_uniform_edge_columns(cols: Columns) -> None:
    expected = round_trip(*cols)
    assert expected.scale is not None
    assert encode_uniform(*cols, scale=expected.scale) == expected
