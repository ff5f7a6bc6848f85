"""models.metrics: worked examples, float error bound of the VWAPs against exact Decimal arithmetic, windows."""

from __future__ import annotations

import math
from decimal import Context, Decimal, localcontext

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.book import BookSnapshot, parse_frame
from models.metrics import BookMetrics, book_metrics, closed_range, vwap, window_start
from tests.factories import RECEIVED_NS, depth_samples, make_book, make_frame

pytestmark = pytest.mark.unit

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REL_ERROR = Decimal("1e-12")
REFERENCE = Context(prec=80)


# --- worked examples ----------------------------------------------------------------------------------------------


def test_fixture_top_of_book_is_exact() -> None:
    book = parse_frame(depth_samples()[0], received_ns=RECEIVED_NS)
    m = book_metrics(book)
    assert m.best_bid == Decimal("40069.98000000")
    assert m.best_ask == Decimal("40069.99000000")
    assert m.spread == Decimal("0.01000000")
    assert str(m.spread) == "0.01000000"  # the scale of the inputs, not 0.01 and not a float's 0.0100000000002
    assert m.crossed is False


def test_two_sided_worked_example() -> None:
    book = make_book(
        bids=[("10.50000000", "2.00000000"), ("10.00000000", "6.00000000")],
        asks=[("11.00000000", "1.00000000"), ("12.00000000", "3.00000000")],
    )
    assert book_metrics(book) == BookMetrics(
        best_bid=Decimal("10.50000000"),
        best_ask=Decimal("11.00000000"),
        spread=Decimal("0.50000000"),
        bid_vwap=10.125,  # (10.5*2 + 10*6) / 8
        ask_vwap=11.75,  # (11*1 + 12*3) / 4
        price=10.9375,  # (10.125 + 11.75) / 2
        crossed=False,
    )


def test_vwap_uses_every_level_sent() -> None:
    prices = [f"{100 - i}.00000000" for i in range(20)]
    qtys = [f"{i + 1}.00000000" for i in range(20)]
    expected = sum((100 - i) * (i + 1) for i in range(20)) / sum(i + 1 for i in range(20))
    assert vwap(prices, qtys) == pytest.approx(expected, rel=1e-15)


def test_vwap_of_one_level_is_its_price() -> None:
    assert vwap(["40069.98000000"], ["0.00002300"]) == pytest.approx(40069.98, rel=1e-15)


def test_vwap_of_empty_side_is_none() -> None:
    assert vwap([], []) is None


@pytest.mark.parametrize(
    ("bid", "ask", "spread"),
    [
        ("40069.98000000", "40069.99000000", "0.01000000"),
        ("100.25", "100.5", "0.25"),
        ("100.00000000", "101", "1.00000000"),
        ("0.07143000", "0.07144000", "0.00001000"),
        ("40000.00000000", "40000.00000010", "1.0E-7"),
        # Beyond float precision: float() would make these 0.0 and 1e20.
        ("1.00000000000000000001", "1.00000000000000000002", "1E-20"),
        (
            "0.00000000000000000001",
            "99999999999999999999.99999999999999999999",
            "99999999999999999999.99999999999999999998",
        ),
    ],
)
def test_spread_is_exact_with_the_scale_of_the_inputs(bid: str, ask: str, spread: str) -> None:
    m = book_metrics(make_book(bids=[(bid, "1")], asks=[(ask, "1")]))
    assert m.spread == Decimal(spread)
    assert m.spread.as_tuple() == Decimal(spread).as_tuple()
    assert (m.best_bid, m.best_ask) == (Decimal(bid), Decimal(ask))


@pytest.mark.parametrize(
    ("bids", "asks", "side"),
    [
        ([("100", "1"), ("99", "3")], [], "bid"),
        ([], [("101", "2"), ("103", "2")], "ask"),
    ],
)
def test_one_sided_book(bids: list[tuple[str, str]], asks: list[tuple[str, str]], side: str) -> None:
    m = book_metrics(make_book(bids=bids, asks=asks))
    assert (m.spread, m.price, m.crossed) == (None, None, False)
    if side == "bid":
        assert (m.best_bid, m.best_ask, m.bid_vwap, m.ask_vwap) == (Decimal("100"), None, 99.25, None)
    else:
        assert (m.best_bid, m.best_ask, m.bid_vwap, m.ask_vwap) == (None, Decimal("101"), None, 102.0)


def test_empty_book() -> None:
    assert book_metrics(make_book(bids=[], asks=[])) == BookMetrics(None, None, None, None, None, None, crossed=False)


@pytest.mark.parametrize(
    ("bid", "ask", "crossed", "spread"),
    [
        ("100.00000000", "100.00000001", False, "0.00000001"),
        ("100.00000000", "100.00000000", True, "0E-8"),
        ("100.00000000", "99.50000000", True, "-0.50000000"),
        ("1.00000000000000000002", "1.00000000000000000001", True, "-1E-20"),
    ],
    ids=["one-tick", "locked", "crossed", "crossed-beyond-float"],
)
def test_crossed_flag(bid: str, ask: str, crossed: bool, spread: str) -> None:
    m = book_metrics(make_book(bids=[(bid, "1")], asks=[(ask, "2")]))
    assert m.crossed is crossed
    assert m.spread == Decimal(spread)
    assert m.price == pytest.approx((float(bid) + float(ask)) / 2, rel=1e-15)  # still computed; averages skip it


@pytest.mark.parametrize("raw", depth_samples())
def test_fixture_frames_metrics(raw: str) -> None:
    book = parse_frame(raw, received_ns=RECEIVED_NS)
    m = book_metrics(book)
    assert m.spread == Decimal(book.ask_prices[0]) - Decimal(book.bid_prices[0]) > 0
    assert not m.crossed
    _assert_close_to_exact(book, m)


# --- properties ---------------------------------------------------------------------------------------------------


@st.composite
def decimal_strings(draw: st.DrawFn, *, min_exp: int = -8, max_exp: int = 7) -> str:
    """A plain positive decimal string with 8..20 decimals and a value in [10^min_exp, 10^(max_exp + 1)]."""
    places = draw(st.integers(8, 20))
    exp = draw(st.integers(min_exp, max_exp))
    n = draw(st.integers(10 ** (places + exp), 10 ** (places + exp + 1)))
    return format(Decimal(n).scaleb(-places), "f")


@st.composite
def plain_decimals(draw: st.DrawFn) -> str:
    """Any positive value the parser accepts: 1-20 integer digits, 0-20 decimals (1e-20 up to 1e20)."""
    int_digits, places = draw(st.integers(1, 20)), draw(st.integers(0, 20))
    whole = draw(st.integers(0 if int_digits == 1 else 10 ** (int_digits - 1), 10**int_digits - 1))
    frac = draw(st.integers(0, 10**places - 1)) if places else 0
    if whole == 0 and frac == 0:
        whole, frac = (0, 1) if places else (1, 0)
    return f"{whole}.{frac:0{places}d}" if places else str(whole)


any_plain_decimal = plain_decimals()


def _build(bid_prices: list[str], ask_prices: list[str], qtys: list[str]) -> BookSnapshot:
    """A parsed book (so it is valid by definition) from prices in any order; quantities are reused cyclically."""
    bids = sorted(bid_prices, key=Decimal, reverse=True)
    asks = sorted(ask_prices, key=Decimal)
    q = iter(qtys * 40)
    frame = make_frame(bids=[(p, next(q)) for p in bids], asks=[(p, next(q)) for p in asks])
    return parse_frame(frame, received_ns=RECEIVED_NS)


def _prices(values: st.SearchStrategy[str], min_size: int, max_size: int) -> st.SearchStrategy[list[str]]:
    return st.lists(values, min_size=min_size, max_size=max_size, unique_by=Decimal)


@st.composite
def books(draw: st.DrawFn, *, values: st.SearchStrategy[str] | None = None, min_levels: int = 1) -> BookSnapshot:
    """Bids and asks drawn independently: often crossed. `values` defaults to decimal_strings()."""
    values = decimal_strings() if values is None else values
    bid_prices = draw(_prices(values, min_levels, 20))
    ask_prices = draw(_prices(values, min_levels, 20))
    return _build(bid_prices, ask_prices, draw(st.lists(values, min_size=1, max_size=40)))


@st.composite
def uncrossed_books(draw: st.DrawFn, *, values: st.SearchStrategy[str] | None = None) -> BookSnapshot:
    """The lowest n_bids of a set of distinct prices are the bids, the rest the asks."""
    values = decimal_strings() if values is None else values
    prices = sorted(draw(_prices(values, 2, 40)), key=Decimal)
    n_bids = draw(st.integers(max(1, len(prices) - 20), min(20, len(prices) - 1)))
    return _build(prices[:n_bids], prices[n_bids:], draw(st.lists(values, min_size=1, max_size=40)))


def _exact_vwap(prices: tuple[str, ...], qtys: tuple[str, ...]) -> Decimal:
    with localcontext(REFERENCE):
        notional = sum((Decimal(p) * Decimal(q) for p, q in zip(prices, qtys, strict=True)), Decimal(0))
        volume = sum((Decimal(q) for q in qtys), Decimal(0))
        return notional / volume


def _rel_error(approx: float, exact: Decimal) -> Decimal:
    with localcontext(REFERENCE):
        return abs(Decimal(approx) - exact) / exact


def _assert_close_to_exact(book: BookSnapshot, m: BookMetrics) -> None:
    assert m.bid_vwap is not None and m.ask_vwap is not None and m.price is not None
    bid = _exact_vwap(book.bid_prices, book.bid_quantities)
    ask = _exact_vwap(book.ask_prices, book.ask_quantities)
    with localcontext(REFERENCE):
        price = (bid + ask) / 2
    assert _rel_error(m.bid_vwap, bid) <= REL_ERROR
    assert _rel_error(m.ask_vwap, ask) <= REL_ERROR
    assert _rel_error(m.price, price) <= REL_ERROR


@PROPERTY
@given(books())
def test_vwaps_and_price_within_1e12_of_exact(book: BookSnapshot) -> None:
    _assert_close_to_exact(book, book_metrics(book))


@PROPERTY
@given(books(values=any_plain_decimal))
def test_extreme_values_within_1e12_of_exact(book: BookSnapshot) -> None:
    m = book_metrics(book)
    assert all(math.isfinite(v) for v in (m.bid_vwap, m.ask_vwap, m.price) if v is not None)
    _assert_close_to_exact(book, m)


@PROPERTY
@given(books())
def test_top_of_book_is_exact_and_crossed_flag_matches(book: BookSnapshot) -> None:
    m = book_metrics(book)
    best_bid, best_ask = Decimal(book.bid_prices[0]), Decimal(book.ask_prices[0])
    assert m.best_bid is not None and m.best_ask is not None and m.spread is not None
    assert m.best_bid.as_tuple() == best_bid.as_tuple()
    assert m.best_ask.as_tuple() == best_ask.as_tuple()
    with localcontext(REFERENCE):
        assert m.spread.as_tuple() == (best_ask - best_bid).as_tuple()
    assert m.crossed is (best_bid >= best_ask)


@PROPERTY
@given(books())
def test_vwap_lies_inside_its_side(book: BookSnapshot) -> None:
    """Exactly: worst bid <= bid VWAP <= best bid and best ask <= ask VWAP <= worst ask; the float VWAPs within the
    error bound of that; price lies between the two VWAPs (a float midpoint never leaves its interval)."""
    m = book_metrics(book)
    assert m.bid_vwap is not None and m.ask_vwap is not None and m.price is not None
    bid, ask = _exact_vwap(book.bid_prices, book.bid_quantities), _exact_vwap(book.ask_prices, book.ask_quantities)
    assert Decimal(book.bid_prices[-1]) <= bid <= Decimal(book.bid_prices[0])
    assert Decimal(book.ask_prices[0]) <= ask <= Decimal(book.ask_prices[-1])
    slack = 1 + float(REL_ERROR)
    assert float(book.bid_prices[-1]) / slack <= m.bid_vwap <= float(book.bid_prices[0]) * slack
    assert float(book.ask_prices[0]) / slack <= m.ask_vwap <= float(book.ask_prices[-1]) * slack
    assert min(m.bid_vwap, m.ask_vwap) <= m.price <= max(m.bid_vwap, m.ask_vwap)


@PROPERTY
@given(uncrossed_books())
def test_uncrossed_book_orders_bid_vwap_best_bid_best_ask_ask_vwap(book: BookSnapshot) -> None:
    m = book_metrics(book)
    assert m.best_bid is not None and m.best_ask is not None and m.spread is not None and m.price is not None
    assert m.best_bid < m.best_ask
    assert m.spread > 0
    assert m.crossed is False
    bid, ask = _exact_vwap(book.bid_prices, book.bid_quantities), _exact_vwap(book.ask_prices, book.ask_quantities)
    assert bid <= m.best_bid < m.best_ask <= ask
    with localcontext(REFERENCE):
        price = (bid + ask) / 2
    assert bid < price < ask
    assert _rel_error(m.price, price) <= REL_ERROR


@PROPERTY
@given(st.one_of(books(values=any_plain_decimal, min_levels=0), uncrossed_books(values=any_plain_decimal)))
def test_book_metrics_never_raises(book: BookSnapshot) -> None:
    m = book_metrics(book)
    assert (m.bid_vwap is None) == (not book.bid_prices)
    assert (m.ask_vwap is None) == (not book.ask_prices)
    assert (m.spread is None) == (m.price is None) == (not book.bid_prices or not book.ask_prices)


# --- windows ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts_s", "window_s", "start"),
    [
        (0, 30, 0),
        (29.999999, 30, 0),
        (30, 30, 30),
        (1_700_000_015.5, 30, 1_700_000_010),
        (1_700_000_015.5, 60, 1_699_999_980),
        (1_700_000_040, 60, 1_700_000_040),
        (-0.5, 30, -30),
    ],
)
def test_window_start(ts_s: float, window_s: int, start: int) -> None:
    assert window_start(ts_s, window_s) == start
    assert type(window_start(ts_s, window_s)) is int


@PROPERTY
@given(st.floats(0, 4e9, allow_nan=False), st.sampled_from([1, 5, 30, 60, 300, 3600, 86_400]))
def test_window_start_is_the_aligned_window_holding_ts(ts_s: float, window_s: int) -> None:
    start = window_start(ts_s, window_s)
    assert start % window_s == 0
    assert start <= ts_s < start + window_s
    assert window_start(start, window_s) == start


def test_closed_range_example() -> None:
    # now 47 s past a boundary, 5 s grace: the window [..010, ..040) is closed, [..040, ..070) is not.
    assert closed_range(from_s=1_699_999_925.0, now_s=1_700_000_047.0, window_s=30, grace_s=5) == (
        1_699_999_920,
        1_700_000_040,
    )


@pytest.mark.parametrize(
    ("now_s", "hi"),
    [(95.0, 90), (94.999, 60), (119.0, 90), (125.0, 120)],
    ids=["ended-exactly-grace-ago", "grace-not-yet-passed", "next-not-closed", "next-closed"],
)
def test_closed_range_grace(now_s: float, hi: int) -> None:
    assert closed_range(from_s=0.0, now_s=now_s, window_s=30, grace_s=5) == (0, hi)


def test_closed_range_empty_when_nothing_closed_since_from() -> None:
    lo, hi = closed_range(from_s=95.0, now_s=100.0, window_s=30, grace_s=50)
    assert lo == hi


@PROPERTY
@given(
    now_s=st.floats(1e6, 4e9, allow_nan=False),
    window_s=st.sampled_from([1, 30, 60, 300]),
    grace_s=st.floats(0, 120, allow_nan=False),
    lookback_s=st.floats(1, 3600, allow_nan=False),
)
def test_closed_range_properties(now_s: float, window_s: int, grace_s: float, lookback_s: float) -> None:
    from_s = now_s - lookback_s
    lo, hi = closed_range(from_s=from_s, now_s=now_s, window_s=window_s, grace_s=grace_s)
    assert (lo, hi) == closed_range(from_s=from_s, now_s=now_s, window_s=window_s, grace_s=grace_s)
    assert lo % window_s == 0 and hi % window_s == 0 and lo <= hi
    assert hi <= now_s - grace_s < hi + window_s  # every closed window, and no open one
    if lo < hi:
        assert lo <= from_s < lo + window_s  # starts with the window holding from_s


# --- floats from the parser ---------------------------------------------------------------------------------------


def _loop_vwap(prices: tuple[str, ...], qtys: tuple[str, ...]) -> float | None:
    """The VWAP as it was computed before the parser handed its floats on: one float() per value, a loop."""
    if not prices:
        return None
    notional = volume = 0.0
    for p, q in zip(prices, qtys, strict=True):
        notional += float(p) * float(q)
        volume += float(q)
    return notional / volume


@pytest.mark.parametrize("raw", [*depth_samples(), make_frame(), make_frame(bids=[], asks=[("1.5", "2")])])
def test_metrics_of_a_parsed_book_are_bit_for_bit_those_of_its_strings(raw: str) -> None:
    parsed = parse_frame(raw, received_ns=RECEIVED_NS)
    assert parsed.numbers() is not None
    plain = make_book(
        bids=list(zip(parsed.bid_prices, parsed.bid_quantities, strict=True)),
        asks=list(zip(parsed.ask_prices, parsed.ask_quantities, strict=True)),
    )
    assert plain.numbers() is None
    m = book_metrics(parsed)
    assert m == book_metrics(plain)
    assert m.bid_vwap == _loop_vwap(parsed.bid_prices, parsed.bid_quantities)
    assert m.ask_vwap == _loop_vwap(parsed.ask_prices, parsed.ask_quantities)


def test_vwap_refuses_sides_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        vwap(["1", "2"], ["1"])
