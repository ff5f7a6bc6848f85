"""`bookfeed export`: books of some symbols over a time range to one Parquet or CSV file, in the native layout (one
row per snapshot, level arrays) or Tardis' book_snapshot_20 layout, streamed through `iter_books` (hot PostgreSQL
and the cold archive alike) in constant memory. Read-only: writes only the output file."""

from __future__ import annotations

import csv
import gzip
import heapq
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine

from api.books import Book, iter_books
from models.vocabulary import EXCHANGE

__all__ = [
    "NATIVE_COLUMNS",
    "NATIVE_SCHEMA",
    "TARDIS_LEVELS",
    "ExportFormat",
    "ExportLayout",
    "Progress",
    "export_books",
    "tardis_columns",
]

ExportFormat = Literal["parquet", "csv"]
ExportLayout = Literal["native", "tardis"]
Progress = Callable[[int, datetime], None]  # (rows written so far, received_at of the last one)

TARDIS_LEVELS = 20  # book_snapshot_20: levels 0..19 of each side
_ROW_GROUP = 10_000  # books buffered per Parquet row group (~15 MB of Python objects at depth20)

# Prices and quantities are the exact decimal text PostgreSQL stores (scale kept: "40069.98000000"); decimal128
# would need one scale per column, and scales differ between symbols (and may between levels).
NATIVE_SCHEMA = pa.schema(
    [
        pa.field("exchange", pa.string(), nullable=False),
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("received_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("last_update_id", pa.int64(), nullable=False),
        pa.field("bid_prices", pa.list_(pa.string()), nullable=False),
        pa.field("bid_quantities", pa.list_(pa.string()), nullable=False),
        pa.field("ask_prices", pa.list_(pa.string()), nullable=False),
        pa.field("ask_quantities", pa.list_(pa.string()), nullable=False),
    ]
)
NATIVE_COLUMNS = tuple(NATIVE_SCHEMA.names)


def tardis_columns(levels: int = TARDIS_LEVELS) -> list[str]:
    """Tardis' book_snapshot_N header: exchange, symbol, timestamp, local_timestamp, then per level i
    asks[i].price, asks[i].amount, bids[i].price, bids[i].amount."""
    cols = ["exchange", "symbol", "timestamp", "local_timestamp"]
    for i in range(levels):
        cols += [f"asks[{i}].price", f"asks[{i}].amount", f"bids[{i}].price", f"bids[{i}].amount"]
    return cols


def _micros(t: datetime) -> int:
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _native_row(book: Book) -> list[Any]:
    return [
        EXCHANGE,
        book.symbol,
        book.received_at,
        book.last_update_id,
        [p for p, _ in book.bids],
        [q for _, q in book.bids],
        [p for p, _ in book.asks],
        [q for _, q in book.asks],
    ]


def _tardis_row(book: Book) -> list[Any]:
    """Binance's partial depth carries no exchange time: `timestamp` falls back to the receive time, as Tardis does.
    Levels beyond the book's depth are empty (None)."""
    t = _micros(book.received_at)
    row: list[Any] = [EXCHANGE, book.symbol, t, t]
    for i in range(TARDIS_LEVELS):
        ask = book.asks[i] if i < len(book.asks) else (None, None)
        bid = book.bids[i] if i < len(book.bids) else (None, None)
        row += [ask[0], ask[1], bid[0], bid[1]]
    return row


def _tardis_schema() -> pa.Schema:
    fields = [pa.field("exchange", pa.string()), pa.field("symbol", pa.string())]
    fields += [pa.field("timestamp", pa.int64()), pa.field("local_timestamp", pa.int64())]
    fields += [pa.field(name, pa.string()) for name in tardis_columns()[4:]]
    return pa.schema(fields)


def _merged(
    engine: Engine, symbols: Sequence[str], start: datetime, end: datetime, archive_url: str | None
) -> Iterator[Book]:
    """Every symbol's books in one (received_at, last_update_id, symbol) order: one cursor per symbol, merged."""
    streams = [iter_books(engine, symbol=s, start=start, end=end, archive_url=archive_url) for s in symbols]
    return heapq.merge(*streams, key=lambda b: (b.received_at, b.last_update_id, b.symbol))


def _write_parquet(books: Iterator[Book], path: Path, layout: ExportLayout, progress: Progress | None) -> int:
    schema = NATIVE_SCHEMA if layout == "native" else _tardis_schema()
    to_row = _native_row if layout == "native" else _tardis_row
    rows = 0
    columns: list[list[Any]] = [[] for _ in schema]

    def flush(writer: pq.ParquetWriter) -> None:
        arrays = [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)]
        writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema), row_group_size=_ROW_GROUP)
        for col in columns:
            col.clear()

    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for book in books:
            for col, value in zip(columns, to_row(book), strict=True):
                col.append(value)
            rows += 1
            if rows % _ROW_GROUP == 0:
                flush(writer)
                if progress is not None:
                    progress(rows, book.received_at)
        if columns[0]:
            flush(writer)
    return rows


def _open_text(path: Path, *, gz: bool) -> IO[str]:
    if gz:
        return io.TextIOWrapper(gzip.open(path, "wb"), encoding="utf-8", newline="")
    return path.open("w", encoding="utf-8", newline="")


def _write_csv(books: Iterator[Book], path: Path, layout: ExportLayout, progress: Progress | None, *, gz: bool) -> int:
    rows = 0
    with _open_text(path, gz=gz) as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(NATIVE_COLUMNS if layout == "native" else tardis_columns())
        for book in books:
            if layout == "native":
                row = _native_row(book)
                row[2] = _rfc3339(book.received_at)
                row[4:] = [json.dumps(v, separators=(",", ":")) for v in row[4:]]
            else:
                row = ["" if v is None else v for v in _tardis_row(book)]
            writer.writerow(row)
            rows += 1
            if progress is not None and rows % _ROW_GROUP == 0:
                progress(rows, book.received_at)
    return rows


def export_books(
    engine: Engine,
    *,
    symbols: Sequence[str],
    start: datetime,
    end: datetime,
    fmt: ExportFormat,
    out: Path,
    layout: ExportLayout = "native",
    archive_url: str | None = None,
    progress: Progress | None = None,
) -> int:
    """Write the books of `symbols` received in [start, end) to `out` (a `.gz` suffix gzips CSV) and return how many.
    Rows are in (received_at, last_update_id, symbol) order. The file appears whole or not at all: it is written
    under a temporary name beside `out`, renamed at the end, removed on error. `progress` is called every
    10,000 rows. Raises ValueError for naive times; ArchiveError (models.coldstore) when the archive is unreadable."""
    tmp = out.with_name(f".{out.name}.part-{os.getpid()}")
    books = _merged(engine, symbols, start, end, archive_url)
    try:
        if fmt == "parquet":
            rows = _write_parquet(books, tmp, layout, progress)
        else:
            rows = _write_csv(books, tmp, layout, progress, gz=out.suffix == ".gz")
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if progress is not None:
        progress(rows, end)
    return rows
