"""The simulate/record/replay subcommands, parsed through a stand-in for feed/cli.py."""

from __future__ import annotations

import argparse

import pytest

from feed.sim._faults import FaultConfig
from feed.sim.commands import format_listening, register

pytestmark = pytest.mark.unit


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bookfeed")
    register(parser.add_subparsers(required=True))
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
    assert callable(args.func)


def test_simulate_flags() -> None:
    argv = "simulate --port 0 --symbols btcusdt,solusdt --rate 500 --seed 3 --drop-every 30 --malformed-fraction 0.1"
    args = _parse([*argv.split(), "--crossed-fraction", "0.2", "--one-sided-fraction", "0.3", "--delay-ms", "50"])
    assert args.symbols == ("BTCUSDT", "SOLUSDT") and args.rate == 500 and args.drop_every == 30
    assert FaultConfig(args.malformed_fraction, args.crossed_fraction, args.one_sided_fraction, args.delay_ms) == (
        FaultConfig(0.1, 0.2, 0.3, 50.0)
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
        ("replay f --speed 2 --fast", "not allowed with"),
        ("record --out x", "--url"),
    ],
)
def test_bad_values_exit_with_one_readable_line(argv: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse(argv.split())
    assert exc.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_listening_line() -> None:
    line = format_listening("simulator", "127.0.0.1", 9443, ("BTCUSDT", "ETHUSDT", "BNBUSDT"))
    assert line == "simulator listening on ws://127.0.0.1:9443 (symbols: BTCUSDT,ETHUSDT,BNBUSDT)"
