"""`bookfeed api --host H --port P`: the console command serves the API (as compose runs it) and refuses bad flags
or a missing DATABASE_URL with one line and status 2."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from stack.cli import main
from stack.harness import free_port
from tests.conftest import service_env
from tests.services import start_process, stop_process

pytestmark = pytest.mark.integration


def test_bookfeed_api_serves(recorded: Engine, database_url: str, redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = service_env(database_url, redis_url, BOOKFEED_API_TOKEN="cli-token")
    proc = start_process(
        # python -m: the console script of an editable install made before api/ existed would not find it.
        [sys.executable, "-m", "stack.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
        env,
        tmp_path / "api.log",
        ready=b"Uvicorn running",
        what="bookfeed api",
    )
    try:
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": "Bearer cli-token"}
        symbols = httpx.get(base + "/v1/symbols", headers=auth, timeout=30)
        assert symbols.status_code == 200
        assert [s["symbol"] for s in symbols.json()["items"]] == ["BTCUSDT", "ETHUSDT"]
        assert httpx.get(base + "/v1/symbols", timeout=30).status_code == 401
        assert httpx.get(base + "/openapi.json", headers=auth, timeout=30).json()["info"]["title"] == "bookfeed"
    finally:
        stop_process(proc)
    assert "cli-token" not in (tmp_path / "api.log").read_text()


def test_bad_flags_and_missing_database_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as bad:
        main(["api", "--port", "eighty"])
    assert bad.value.code == 2
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["api", "--port", str(free_port())]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "bookfeed: error: DATABASE_URL is not set"
