"""stack.status without services: the stale threshold, the report as text and JSON, the live view's warning line,
and `bookfeed status` refusing to run without its URLs."""

from __future__ import annotations

import json

import pytest

from models.settings import Settings
from stack.cli import build_parser, main
from stack.live import format_warning
from stack.status import DEGRADED, DOWN, HEALTHY, Status, SymbolStatus, format_status, stale_after_s

pytestmark = pytest.mark.unit


def _status(code: int, problems: tuple[str, ...] = ()) -> Status:
    return Status(
        code=code,
        problems=problems,
        stale_after_s=10.0,
        symbols=(
            SymbolStatus("BTCUSDT", 0.4, 10.0, 1, False, 10.0),
            SymbolStatus("ETHUSDT", 42.0, 0.0, 2, True, 10.0),
        ),
        feeds=1,
        queue_depth=3,
        oldest_batch_age_s=0.2,
        workers_alive=2,
        averages_age_s={30: 12.0, 60: None},
        database_lag_s=0.4,
        checked_at=1.0,
    )


def test_stale_after_is_ten_update_intervals_at_least_the_setting() -> None:
    s = Settings(status_stale_s=10.0, speed="1000ms")
    assert stale_after_s(s) == 10.0
    assert stale_after_s(s, 100) == 10.0
    assert stale_after_s(Settings(status_stale_s=2.0), 1000) == 10.0
    assert stale_after_s(Settings(status_stale_s=2.0), 100) == 2.0
    assert stale_after_s(Settings(status_stale_s=30.0), 1000) == 30.0


def test_report_as_text_names_the_state_each_problem_and_each_symbol() -> None:
    text = format_status(_status(DEGRADED, ("1 of 2 symbols stale (no book stored lately): ETHUSDT (42 s)",)))
    lines = text.splitlines()
    assert lines[0] == "bookfeed status: degraded"
    assert "ETHUSDT (42 s)" in lines[1]
    assert any(line.split()[:1] == ["ETHUSDT"] and line.endswith("stale") for line in lines)
    assert "workers alive 2" in text and "queue 3" in text and "60 s: -" in text


def test_report_as_json_has_the_state_and_every_field() -> None:
    report = json.loads(json.dumps(_status(DOWN, ("no Celery worker answers a ping",)).as_dict()))
    assert report["state"] == "down" and report["code"] == DOWN
    assert report["symbols"][1] == {
        "symbol": "ETHUSDT",
        "last_book_age_s": 42.0,
        "frames_per_s": 0.0,
        "gaps_last_hour": 2,
        "stale": True,
        "stale_after_s": 10.0,
    }
    assert report["averages_age_s"] == {"30": 12.0, "60": None}


def test_live_view_warns_only_when_not_healthy() -> None:
    assert format_warning(_status(HEALTHY)) is None
    line = format_warning(_status(DEGRADED, ("a", "b")))
    assert line == "WARNING status degraded: a; b"


def test_status_command_takes_json_flag() -> None:
    args = build_parser().parse_args(["status", "--json"])
    assert args.json is True


def test_status_without_urls_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.chdir("/")  # no .env
    assert main(["status"]) == 2
    assert "DATABASE_URL" in capsys.readouterr().err


def test_up_gives_the_children_metrics_ports_and_shows_their_urls() -> None:
    from stack.harness import free_port
    from stack.up import _metrics_ports

    port = free_port()
    env: dict[str, str] = {}
    urls = _metrics_ports(Settings(metrics_port=port, worker_metrics_port=0), env)
    assert env == {"BOOKFEED_METRICS_PORT": str(port), "BOOKFEED_WORKER_METRICS_PORT": "0"}
    assert urls == f"feed http://127.0.0.1:{port}/metrics"
