"""The simulate/record/replay subcommands, parsed through a stand-in for feed/cli.py; usage errors exit 2."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from simulator import FAULT_SETTINGS, FaultConfig, register_commands

pytestmark = pytest.mark.unit


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bookfeed")
    register_commands(parser.add_subparsers(required=True))
    return parser.parse_args(argv)


def test_simulate_defaults() -> None:
    args = _parse(["simulate"])
    assert (args.host, args.port, args.symbols, args.rate, args.seed) == (
        "127.0.0.1",
        9443,
        ("BTCUSDT", "ETHUSDT", "BNBUSDT"),
        None,
        0,
    )
    assert (args.ping_interval, args.pong_timeout, args.max_lifetime) == (20.0, 60.0, 86400.0)
    assert FaultConfig(**{name: getattr(args, name) for name in FAULT_SETTINGS}) == FaultConfig()
    assert callable(args.func)


def test_each_fault_setting_is_the_flag_of_the_same_words() -> None:
    values = {name: "0.25" if name.endswith("_fraction") else str(1.5 + i) for i, name in enumerate(FAULT_SETTINGS)}
    argv = ["simulate"] + [arg for name, v in values.items() for arg in ("--" + name.replace("_", "-"), v)]
    args = _parse(argv)
    assert {name: getattr(args, name) for name in FAULT_SETTINGS} == {n: float(v) for n, v in values.items()}


def test_simulate_flags() -> None:
    argv = "simulate --port 0 --symbols btcusdt,solusdt --rate 500 --seed 3 --drop-every-s 30 --malformed-fraction 0.1"
    args = _parse([*argv.split(), "--crossed-fraction", "0.2", "--one-sided-fraction", "0.3", "--delay-ms", "50"])
    assert args.symbols == ("BTCUSDT", "SOLUSDT") and args.rate == 500 and args.drop_every_s == 30
    assert (args.malformed_fraction, args.crossed_fraction, args.one_sided_fraction, args.delay_ms) == (
        0.1,
        0.2,
        0.3,
        50.0,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("simulate --malformed-fraction 1.5", "must be in [0, 1]"),
        ("simulate --rate -3", "must be positive"),
        ("simulate --rate nan", "must be positive"),
        ("simulate --random-symbols 0", "positive integer"),
        ("simulate --symbols btcusdt --random-symbols 3", "not allowed with"),
        ("simulate --port 70000", "0..65535"),
        ("simulate --symbols btc-usdt", "is not 2-20 letters or digits"),
        ("simulate --symbols ,", "expected comma-separated symbols"),
        ("simulate --drop-every 3", "unrecognized arguments"),
        ("replay f --speed 2 --fast", "not allowed with"),
        ("record --out x", "--url"),
        ("record --out x --url http://h:1/ws", "not a websocket URL"),
    ],
)
def test_bad_values_exit_2_with_one_readable_line(argv: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse(argv.split())
    assert exc.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_unreadable_recording_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["replay", str(tmp_path / "missing.jsonl.gz"), "--port", "0"])
    assert args.func(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("bookfeed replay: error: cannot read recording")


def test_scale_and_limit_flags() -> None:
    argv = "simulate --random-symbols 1500 --not-trading 7 --max-connections-per-5m 50"
    args = _parse([*argv.split(), "--max-lifetime", "60", "--shutdown-notice", "10"])
    assert (args.random_symbols, args.not_trading, args.max_connections_per_5m) == (1500, 7, 50)
    assert (args.max_lifetime, args.shutdown_notice) == (60.0, 10.0)
    defaults = _parse(["simulate"])
    assert (defaults.not_trading, defaults.max_connections_per_5m) == (None, 300)
    assert _parse(["replay", "f", "--max-connections-per-5m", "0"]).max_connections_per_5m == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("simulate --not-trading -1", "must be an integer >= 0"),
        ("simulate --max-connections-per-5m 1.5", "not a number"),
    ],
)
def test_bad_scale_flags_exit_2(argv: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse(argv.split())
    assert exc.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
