"""The bare COPY limit's method without a server: a CHECKPOINT first, a discarded warm-up round, then rounds each
started after a CHECKPOINT, summarised by their median and range; and what is printed of it and of the capacity's
ratio over that range. psycopg2 and the clock are fakes: each round COPYs at a rate the test sets."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.errors
import pytest

from bench import copy_limit as cl
from bench.report import format_copy_limit, format_ratio_range, ratio_range, spread

pytestmark = pytest.mark.unit


class _Server:
    """Every statement the fake connections run, in order; COPY advances the fake clock at the current phase's rate
    (one phase per CHECKPOINT: the first before the warm-up, one before each round)."""

    def __init__(self, rates: list[float], *, may_checkpoint: bool = True) -> None:
        self.rates = rates
        self.may_checkpoint = may_checkpoint
        self.log: list[str] = []
        self.now = 0.0
        self.phase = 0

    def clock(self) -> float:
        return self.now

    def connect(self, dsn: str) -> _Conn:
        return _Conn(self)


class _Cursor:
    def __init__(self, server: _Server) -> None:
        self.server = server

    def __enter__(self) -> _Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, sql: str) -> None:
        if sql == "CHECKPOINT":
            if not self.server.may_checkpoint:
                raise psycopg2.errors.InsufficientPrivilege("must be superuser or have pg_checkpoint to do CHECKPOINT")
            self.server.phase += 1
        self.server.log.append(sql.split()[0])

    def copy_expert(self, sql: str, buf: io.BytesIO, size: int = 8192) -> None:
        rows = buf.getvalue().count(b"\n")
        phase = min(self.server.phase, len(self.server.rates) - 1)
        self.server.now += rows / self.server.rates[phase]
        self.server.log.append(f"COPY {rows}")


class _Conn:
    autocommit = False

    def __init__(self, server: _Server) -> None:
        self.server = server

    def cursor(self) -> _Cursor:
        return _Cursor(self.server)

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def _fake(monkeypatch: pytest.MonkeyPatch, server: _Server) -> Iterator[_Server]:
    monkeypatch.setattr(psycopg2, "connect", server.connect)
    monkeypatch.setattr(time, "perf_counter", server.clock)  # restored after the test
    yield server


_ROWS = [f"row {i}\n" for i in range(1_000)]


def test_rounds_follow_a_checkpoint_and_the_warm_up_is_discarded(monkeypatch: pytest.MonkeyPatch) -> None:
    # phase 1: warm-up (cold, slow); phases 2-4: the three rounds
    with _fake(monkeypatch, _Server([1.0, 10_000.0, 60_000.0, 40_000.0, 50_000.0])) as server:
        r = cl.copy_limit("postgresql+psycopg2://x/db", _ROWS, chunk=200, duration_s=3.0, rounds=3, warmup_s=1.0)
    assert r["checkpoints"] is True
    assert r["warmup_rows_per_s"] == pytest.approx(10_000.0)
    assert r["rounds_rows_per_s"] == pytest.approx([60_000.0, 40_000.0, 50_000.0])
    assert r["rows_per_s"] == pytest.approx(50_000.0)  # the median, not the warm-up-dragged mean
    assert (r["rows_per_s_min"], r["rows_per_s_max"]) == pytest.approx((40_000.0, 60_000.0))
    assert r["seconds"] == pytest.approx(3.0, abs=0.01) and r["chunk_rows"] == 200
    assert r["rows"] == pytest.approx(150_000, rel=0.01)
    log = server.log
    assert log[0] == "CHECKPOINT" and log.count("CHECKPOINT") == 4
    # each round: the table emptied, then a CHECKPOINT, then the first COPY
    for i in (i for i, s in enumerate(log) if s == "CHECKPOINT" and i > 0):
        assert log[i - 1] == "TRUNCATE" and log[i + 1].startswith("COPY")


def test_without_the_right_to_checkpoint_the_rounds_still_run(monkeypatch: pytest.MonkeyPatch) -> None:
    with _fake(monkeypatch, _Server([20_000.0], may_checkpoint=False)) as server:
        r = cl.copy_limit("postgresql://x/db", _ROWS, chunk=200, duration_s=1.0, rounds=2, warmup_s=0.5)
    assert r["checkpoints"] is False and "CHECKPOINT" not in server.log
    assert r["rounds_rows_per_s"] == pytest.approx([20_000.0, 20_000.0])
    assert "CHECKPOINT not permitted" in format_copy_limit(200, r)


def test_checkpoint_reports_whether_the_role_may(monkeypatch: pytest.MonkeyPatch) -> None:
    with _fake(monkeypatch, _Server([1.0])):
        assert cl.checkpoint("postgresql://x/db") is True
    with _fake(monkeypatch, _Server([1.0], may_checkpoint=False)):
        assert cl.checkpoint("postgresql://x/db") is False


def test_no_rows_gives_zeros_in_the_same_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    with _fake(monkeypatch, _Server([1.0])):
        r = cl.copy_limit("postgresql://x/db", [], chunk=200, duration_s=1.0)
    assert r["rows_per_s"] == r["rows_per_s_min"] == r["rows_per_s_max"] == 0.0 and r["rounds_rows_per_s"] == []


def test_spread_is_the_median_and_the_range() -> None:
    assert spread([61_000.0, 36_000.0, 66_000.0]) == {"median": 61_000.0, "min": 36_000.0, "max": 66_000.0}
    assert spread([40.0, 60.0]) == {"median": 50.0, "min": 40.0, "max": 60.0}
    assert spread([]) == {"median": 0.0, "min": 0.0, "max": 0.0}


def test_ratio_range_divides_by_the_fastest_then_the_slowest_round() -> None:
    assert ratio_range(24_000.0, 48_000.0, 80_000.0) == pytest.approx((0.3, 0.5))
    assert ratio_range(None, 1.0, 2.0) is None
    assert ratio_range(1.0, 0.0, 2.0) is None


def test_printed_lines_carry_the_median_its_range_and_the_ratio_range() -> None:
    r: dict[str, Any] = {
        "rows_per_s": 61_234.4,
        "rows_per_s_min": 58_000.0,
        "rows_per_s_max": 66_000.4,
        "rounds_rows_per_s": [58_000.0, 61_234.4, 66_000.4],
        "checkpoints": True,
    }
    line = format_copy_limit("200", r)
    assert (
        "200 rows per COPY: 61,234 rows/s, median of 3 round(s) (range 58,000-66,000; each after a CHECKPOINT)" in line
    )
    text = format_ratio_range("capacity vs bare COPY", ratio_range(24_000.0, 48_000.0, 80_000.0), indent="  ")
    assert text == "  capacity vs bare COPY  0.300 .. 0.500"
    assert format_ratio_range("x", None).endswith("x  -")
