"""The live-push item: RFC 3339 times truncated to the microsecond as stored, exact fixed-point decimals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from models.live import live_channel, live_item, ns_to_rfc3339, rfc3339
from models.metrics import book_metrics
from tests.factories import make_book

pytestmark = pytest.mark.unit


def test_times_are_utc_z_with_microseconds() -> None:
    assert ns_to_rfc3339(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456Z"  # truncated, as stored
    assert ns_to_rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    plus_one = datetime(2023, 11, 14, 23, 13, 20, tzinfo=timezone(timedelta(hours=1)))
    assert rfc3339(plus_one) == "2023-11-14T22:13:20.000000Z"
    assert rfc3339(datetime(2023, 11, 14, tzinfo=UTC)) == "2023-11-14T00:00:00.000000Z"


def test_item_keeps_the_decimals_as_sent() -> None:
    book = make_book(bids=[("0.00000001", "5")], asks=[("0.00000002000", "1.50")], last_update_id=9)
    item = live_item("binance", book, book_metrics(book))
    assert (item["best_bid"], item["best_ask"]) == ("0.00000001", "0.00000002000")
    assert item["spread"] == "0.00000001000"  # never 1.000E-8
    assert (item["symbol"], item["last_update_id"], item["depth"], item["crossed"]) == ("BTCUSDT", 9, 20, False)
    assert item["received_at"] == "2023-11-14T22:13:20.123456Z"


def test_empty_side_has_no_metrics() -> None:
    book = make_book(bids=[])
    item = live_item("binance", book, book_metrics(book))
    assert (item["best_bid"], item["spread"], item["price"]) == (None, None, None)


def test_channel_under_the_key_prefix() -> None:
    assert live_channel("") == "bookfeed:live"
    assert live_channel("run-1:") == "run-1:bookfeed:live"
