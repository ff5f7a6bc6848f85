"""`bookfeed export` / `bookfeed archive` without services: time parsing, bad flags, the Tardis layout."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone

import pytest

from api.books import Book
from api.export import _tardis_row, tardis_columns
from stack.cli import main
from stack.dataout import utc_time

pytestmark = pytest.mark.unit


def test_times_are_rfc3339_or_dates_in_utc() -> None:
    assert utc_time("2026-11-29") == datetime(2026, 11, 29, tzinfo=UTC)
    assert utc_time("2026-11-29T12:00:00Z") == datetime(2026, 11, 29, 12, tzinfo=UTC)
    assert utc_time("2026-11-29T13:00:00+01:00") == datetime(2026, 11, 29, 12, tzinfo=UTC)
    assert utc_time("2026-11-29T12:00:00.000001") == datetime(2026, 11, 29, 12, 0, 0, 1, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        utc_time("yesterday")


def test_tardis_columns_and_a_short_book() -> None:
    cols = tardis_columns()
    assert cols[:8] == ["exchange", "symbol", "timestamp", "local_timestamp",
                        "asks[0].price", "asks[0].amount", "bids[0].price", "bids[0].amount"]  # fmt: skip
    assert cols[-1] == "bids[19].amount" and len(cols) == 4 + 4 * 20
    t = datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    book = Book("BTCUSDT", t, 7, bids=[("1.10000000", "2.00000000")], asks=[])
    row = dict(zip(cols, _tardis_row(book), strict=True))
    micros = int(datetime(2026, 11, 29, 10, tzinfo=UTC).timestamp()) * 1_000_000 + 123456
    assert (row["exchange"], row["symbol"], row["timestamp"], row["local_timestamp"]) == (
        "binance",
        "BTCUSDT",
        micros,
        micros,
    )
    assert (row["bids[0].price"], row["bids[0].amount"]) == ("1.10000000", "2.00000000")
    assert row["asks[0].price"] is None and row["bids[1].price"] is None


def test_export_refuses_an_empty_range(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["export", "--symbols", "BTCUSDT", "--start", "2026-11-29", "--end", "2026-11-29", "--format", "csv"]
    assert main([*args, "--out", "x.csv"]) == 2
    assert "--end must be after --start" in capsys.readouterr().err


def test_export_refuses_a_bad_time(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "export",
                "--symbols",
                "BTCUSDT",
                "--start",
                "soon",
                "--end",
                "2026-11-29",
                "--format",
                "csv",
                "--out",
                "x",
            ]
        )
    assert exc.value.code == 2 and "not an RFC 3339 time" in capsys.readouterr().err


def test_archive_with_nothing_to_do_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BOOKFEED_ARCHIVE_URL", raising=False)
    monkeypatch.delenv("BOOKFEED_RETENTION_DAYS", raising=False)
    assert main(["archive"]) == 2
    assert "BOOKFEED_ARCHIVE_URL" in capsys.readouterr().err
