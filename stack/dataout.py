"""`bookfeed export` and `bookfeed archive`: the glue between the command line and api.export, workers.archive and
workers.retention (an engine from the settings, a progress bar on a terminal, a summary line). Returns the lines to
print; only stack.cli prints."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

from api.export import ExportFormat, ExportLayout, Progress, export_books
from models.errors import ConfigError
from models.settings import Settings
from models.vocabulary import normalise_symbol
from workers.archive import archive_closed_days
from workers.retention import run_retention

__all__ = ["ExportOptions", "run_archive", "run_export", "utc_time"]


def utc_time(text: str) -> datetime:
    """argparse type: RFC 3339 (``2026-11-29T12:00:00Z``, an offset, or none: UTC) or a date (its 00:00 UTC)."""
    value = text.strip()
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        t = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time or a date: {value[:40]!r}") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class ExportOptions:
    symbols: tuple[str, ...]
    start: datetime
    end: datetime
    fmt: ExportFormat
    layout: ExportLayout
    out: Path


def _engine(settings: Settings) -> Engine:
    return create_engine(settings.require_database_url(), poolclass=NullPool)


def _bar(opts: ExportOptions) -> tuple[Progress | None, Callable[[], None]]:
    """A rich progress bar over the time range on a terminal (rows have no cheap total: time is the measure)."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("export {task.fields[rows]:,} books"), BarColumn(), TextColumn("{task.fields[at]}"),
        TimeElapsedColumn(), transient=True,
    )  # fmt: skip
    span = (opts.end - opts.start).total_seconds()
    task = bar.add_task("export", total=span, rows=0, at="")
    bar.start()

    def update(rows: int, at: datetime) -> None:
        done = min(span, (at - opts.start).total_seconds())
        bar.update(task, completed=done, rows=rows, at=at.strftime("%Y-%m-%d %H:%M:%SZ"))

    return update, bar.stop


def run_export(settings: Settings, opts: ExportOptions) -> list[str]:
    """Export, with a progress bar on a terminal; returns the summary line."""
    if opts.end <= opts.start:
        raise ConfigError("--end must be after --start")
    symbols = tuple(normalise_symbol(s) for s in opts.symbols)
    engine = _engine(settings)
    progress, stop = _bar(opts)
    began = time.monotonic()
    try:
        rows = export_books(
            engine,
            symbols=symbols,
            start=opts.start,
            end=opts.end,
            fmt=opts.fmt,
            layout=opts.layout,
            out=opts.out,
            archive_url=settings.archive_url or None,
            progress=progress,
        )
    finally:
        stop()
        engine.dispose()
    took = time.monotonic() - began
    return [f"exported {rows:,} books of {','.join(symbols)} to {opts.out} ({opts.fmt}, {opts.layout}) in {took:.1f} s"]


def _archive_once(settings: Settings, engine: Engine) -> list[str]:
    lines: list[str] = []
    if settings.archive_url:
        r = archive_closed_days(engine, settings.archive_url)
        lines.append(
            f"archive: {len(r.archived)} days archived and verified, {len(r.skipped)} already verified, "
            f"{len(r.failed)} not verified (retried next run)"
        )
    if settings.retention_days:
        run = run_retention(engine, retention_days=settings.retention_days, archive_url=settings.archive_url or None)
        r2 = run.retention
        kept = f", {len(r2.refused)} kept (not verified by the archive)" if r2.refused else ""
        lines.append(
            f"retention ({settings.retention_days} days): {len(r2.dropped)} days dropped{kept}, "
            f"{r2.batches_deleted} ingest batch records deleted"
        )
        if run.rearchived:
            # Books arrived after these days were archived: archived again, so the next run may drop them.
            lines.append(f"archive: {len(run.rearchived)} days archived again (books arrived after their archive)")
    return lines


def run_archive(settings: Settings, *, every_s: float | None, emit: Callable[[str], None]) -> None:
    """Archive closed days (BOOKFEED_ARCHIVE_URL), then drop old ones (BOOKFEED_RETENTION_DAYS); once, or every
    `every_s` seconds until interrupted. Retention needs the tables' owner: run it with the migrate role's URL."""
    if not settings.archive_url and not settings.retention_days:
        raise ConfigError("set BOOKFEED_ARCHIVE_URL and/or BOOKFEED_RETENTION_DAYS: there is nothing to do")
    engine = _engine(settings)
    try:
        while True:
            for line in _archive_once(settings, engine):
                emit(line)
            if every_s is None:
                return
            time.sleep(every_s)
    finally:
        engine.dispose()
