"""Flower under `bookfeed up`: loopback only, a per-run password in a 0600 file, never on the command line."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from stack.up import FLOWER_USER, flower_env
from workers.commands import flower_command

pytestmark = pytest.mark.unit


def test_flower_listens_on_loopback_only() -> None:
    argv = flower_command(5555)
    assert argv[-4:] == ["workers", "flower", "--port=5555", "--address=127.0.0.1"]


def test_flower_gets_a_random_password_kept_in_a_private_file(tmp_path: Path) -> None:
    env = flower_env(tmp_path)
    user, password = env["FLOWER_BASIC_AUTH"].split(":", 1)
    assert user == FLOWER_USER and len(password) >= 32
    # Flower splits the setting on commas (several user:password pairs): a password must hold none.
    assert "," not in password
    path = tmp_path / "flower-auth"
    assert path.read_text().strip() == env["FLOWER_BASIC_AUTH"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert password not in " ".join(flower_command(5555))  # `ps` shows every user the command line


def test_each_run_has_its_own_password_and_an_old_file_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "flower-auth"
    path.write_text("bookfeed:old\n")
    path.chmod(0o644)
    first = flower_env(tmp_path)["FLOWER_BASIC_AUTH"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert flower_env(tmp_path)["FLOWER_BASIC_AUTH"] != first
