"""workers.ingest: the UTC days whose partitions a batch needs (no database: the pure helper)."""

from __future__ import annotations

from datetime import date

import pytest

from models.metrics import book_metrics
from tests.factories import make_book
from workers.envelope import ParsedBatch
from workers.ingest import _days

pytestmark = pytest.mark.unit

DAY_NS = 86_400 * 10**9
T0 = 1_790_000_000 * 10**9  # 2026-09-21 (UTC)


def _batch(*ns: int) -> ParsedBatch:
    books = [make_book(received_ns=n) for n in ns]
    return ParsedBatch("b", "binance", [(b, book_metrics(b)) for b in books], ["raw"] * len(books), [])


def test_a_batch_within_one_day_needs_that_day() -> None:
    assert _days(_batch(T0, T0 + 5, T0 + 1000)) == {date(2026, 9, 21)}


def test_a_batch_over_several_days_needs_only_the_days_it_has_books_on() -> None:
    assert _days(_batch(T0 + 3 * DAY_NS, T0, T0 + 3 * DAY_NS + 1)) == {date(2026, 9, 21), date(2026, 9, 24)}


def test_a_batch_without_books_needs_no_day() -> None:
    assert _days(_batch()) == set()
