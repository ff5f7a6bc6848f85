"""The every-symbol flags of `bookfeed feed` and `bookfeed up` (--symbols all, --quote, --exclude, --rest-url,
--shard, --random-symbols): they reach Settings and the children's environment, and a bad value is one line, exit 2,
before anything starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from models.settings import Settings
from stack import cli
from stack.cli import build_parser, main
from stack.up import UpOptions, child_env, simulator_command

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("BOOKFEED_") or name.upper() in ("DATABASE_URL", "REDIS_URL"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env


ALL_FLAGS = [
    *("--symbols", "all", "--quote", "usdt,FDUSD", "--exclude", "usdcusdt"),
    *("--rest-url", "http://127.0.0.1:9443/", "--shard", "1/2"),
]


@pytest.mark.parametrize("command", ["feed", "up"])
def test_the_flags_set_the_settings(command: str) -> None:
    s = cli._settings(build_parser().parse_args([command, *ALL_FLAGS]))
    assert s.all_symbols and (s.quote, s.exclude) == (("USDT", "FDUSD"), ("USDCUSDT",))
    assert (s.rest_url, s.shard_of_n) == ("http://127.0.0.1:9443", (1, 2))


def test_up_hands_the_flags_to_the_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    env = child_env(cli._settings(build_parser().parse_args(["up", *ALL_FLAGS])))
    assert env["BOOKFEED_SYMBOLS"] == "ALL" and env["BOOKFEED_QUOTE"] == "USDT,FDUSD"
    assert env["BOOKFEED_SHARD"] == "1/2" and env["BOOKFEED_REST_URL"] == "http://127.0.0.1:9443"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    again = Settings()
    assert (again.symbols, again.quote, again.exclude, again.shard) == (
        ("ALL",),
        ("USDT", "FDUSD"),
        ("USDCUSDT",),
        "1/2",
    )


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["feed", "--shard", "2/2"], "invalid BOOKFEED_SHARD: "),
        (["up", "--shard", "half"], "invalid BOOKFEED_SHARD: "),
        (["feed", "--quote", "USDT"], "invalid BOOKFEED_QUOTE: "),
        (["up", "--symbols", "btcusdt", "--exclude", "ETHUSDT"], "invalid BOOKFEED_EXCLUDE: "),
        (["feed", "--symbols", "all", "--rest-url", "ftp://api.binance.com"], "invalid BOOKFEED_REST_URL: "),
        (["up", "--symbols", "all", "--rest-url", "http://host:port"], "invalid BOOKFEED_REST_URL: "),
        (["up", "--url", "ws://:9443"], "invalid BOOKFEED_URL: "),
        (["feed", "--symbols", "all,btcusdt"], "invalid BOOKFEED_SYMBOLS: "),
        (["up", "--symbols", "all", "--url", "ws://h:1/stream?streams=btcusdt@depth20"], "invalid BOOKFEED_SYMBOLS"),
        (["up", "--random-symbols", "50"], "--random-symbols needs --simulate and --symbols all"),
        (["up", "--simulate", "--random-symbols", "50"], "--random-symbols needs --simulate and --symbols all"),
    ],
)
def test_a_bad_value_is_one_line_and_exit_2(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2  # before anything starts: no Redis or database is configured here
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bookfeed: error: ") and says in err


def test_a_bad_random_symbols_value_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["up", "--simulate", "--symbols", "all", "--random-symbols", "0"])
    assert info.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_the_simulator_of_up_makes_up_symbols_for_all() -> None:
    s = Settings(symbols="all")
    argv = simulator_command(9443, s, UpOptions(simulate=True, random_symbols=1500, malformed_fraction=0.01))
    assert argv[argv.index("--random-symbols") + 1] == "1500" and "--symbols" not in argv
    assert "--malformed-fraction=0.01" in argv
    assert build_parser().parse_args(argv[argv.index("simulate") :]).random_symbols == 1500
    named = simulator_command(9443, Settings(symbols="btcusdt"), UpOptions(simulate=True))
    assert named[named.index("--symbols") + 1] == "BTCUSDT" and "--random-symbols" not in named
