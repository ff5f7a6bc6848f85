"""Hardening against a hostile local user or caller: the partition function, login passwords, Flower's login."""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.exc import DataError

from stack.harness import free_port
from stack.up import FLOWER_USER, flower_env
from tests.conftest import service_env
from tests.services import ROOT, stop_process, wait_for
from workers.commands import flower_command
from workers.schema import ensure_login

pytestmark = pytest.mark.integration


def _today() -> date:
    return datetime.now(UTC).date()


def _partition(day: date) -> str:
    return f"book_snapshots_p{day:%Y%m%d}"


def _public_table_exists(conn: Connection, name: str) -> bool:
    return conn.execute(text("SELECT to_regclass(:n) IS NOT NULL"), {"n": f"public.{name}"}).scalar_one()


@pytest.fixture
def drop_partitions(engine: Engine) -> Iterator[list[date]]:
    """Days whose partition a test creates: dropped afterwards, so later tests meet the same empty days."""
    days: list[date] = []
    yield days
    with engine.begin() as conn:
        for day in days:
            conn.execute(text(f"DROP TABLE IF EXISTS public.{_partition(day)}"))  # a name built from a date


# --- bookfeed_ensure_partition ---------------------------------------------------------------------------------------


def test_ensure_partition_runs_with_a_pinned_search_path(engine: Engine) -> None:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT prosecdef, proconfig FROM pg_proc WHERE oid = CAST(:f AS regprocedure)"),
            {"f": "public.bookfeed_ensure_partition(date)"},
        ).one()
    assert row.prosecdef
    # pg_temp last: left out, it would be searched first for tables.
    assert row.proconfig == ["search_path=pg_catalog, public, pg_temp"]


@pytest.mark.parametrize("offset_days", [365, 3, -3651, -365 * 40])
def test_ensure_partition_refuses_days_far_from_today(engine: Engine, offset_days: int) -> None:
    day = _today() + timedelta(days=offset_days)
    with engine.connect() as conn, pytest.raises(DataError, match=rf"day {day.isoformat()} is outside \["):
        conn.execute(text("SELECT bookfeed_ensure_partition(:d)"), {"d": day})


def test_ensure_partition_refuses_null(engine: Engine) -> None:
    with engine.connect() as conn, pytest.raises(DataError, match="is outside"):
        conn.execute(text("SELECT bookfeed_ensure_partition(NULL)"))


@pytest.mark.parametrize("offset_days", [2, -3650])
def test_ensure_partition_accepts_the_edges(engine: Engine, drop_partitions: list[date], offset_days: int) -> None:
    day = _today() + timedelta(days=offset_days)
    with engine.begin() as conn:
        if _public_table_exists(conn, _partition(day)):
            pytest.skip("partition made by another test")
        drop_partitions.append(day)
        conn.execute(text("SELECT bookfeed_ensure_partition(:d)"), {"d": day})
        assert _public_table_exists(conn, _partition(day))


def test_a_callers_temp_table_cannot_shadow_the_partition(engine: Engine, drop_partitions: list[date]) -> None:
    """A writer's temp table named like a missing partition made the old function (search_path = public, so
    pg_temp first) believe the partition existed: that day's books then had nowhere to go."""
    day = _today() - timedelta(days=3000)  # a day no other test stores
    drop_partitions.append(day)
    with engine.begin() as conn:
        assert not _public_table_exists(conn, _partition(day))
        conn.execute(text("SET LOCAL ROLE bookfeed_writer"))
        conn.execute(text(f"CREATE TEMP TABLE {_partition(day)} (x int) ON COMMIT DROP"))
        conn.execute(text("SELECT bookfeed_ensure_partition(:d)"), {"d": day})
        assert _public_table_exists(conn, _partition(day))
        conn.execute(text("RESET ROLE"))
        parent = conn.execute(
            text("SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = to_regclass(:n)"),
            {"n": f"public.{_partition(day)}"},
        ).scalar_one()
    assert parent == "book_snapshots"


# --- ensure_login ----------------------------------------------------------------------------------------------------


def _scram_verifier(password: str, salt: bytes, iterations: int) -> str:
    """RFC 5802 / 7677, computed independently of libpq: SaltedPassword = PBKDF2-HMAC-SHA256, ClientKey and
    ServerKey are HMACs of it, StoredKey = SHA256(ClientKey)."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    stored = b64(hashlib.sha256(client_key).digest()).decode()
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${stored}:{b64(server_key).decode()}"


def test_ensure_login_sends_a_scram_verifier_never_the_password(database_url: str, engine: Engine) -> None:
    name = f"bf_login_{uuid.uuid4().hex[:6]}"
    password = f"pw-{uuid.uuid4().hex}"
    sent: list[str] = []

    def _capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        sent.append(cursor.query.decode())  # psycopg2: the exact text that went to the server

    event.listen(Engine, "after_cursor_execute", _capture)
    try:
        ensure_login(database_url, name=name, password=password, group="bookfeed_reader")
        ensure_login(database_url, name=name, password=password, group="bookfeed_reader")  # the ALTER path
    finally:
        event.remove(Engine, "after_cursor_execute", _capture)
    try:
        assert sent and not [q for q in sent if password in q]
        with engine.connect() as conn:
            query = text("SELECT rolpassword FROM pg_authid WHERE rolname = :n")
            stored = conn.execute(query, {"n": name}).scalar_one()
        head, keys = stored.split(":", 1)
        assert head == "SCRAM-SHA-256$4096"
        salt = base64.b64decode(keys.split("$", 1)[0])
        assert len(salt) == 16
        assert stored == _scram_verifier(password, salt, 4096)
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP ROLE IF EXISTS "{name}"'))  # a name made above


# --- Flower under `bookfeed up` --------------------------------------------------------------------------------------


def _get(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _answers(url: str) -> bool:
    try:
        _get(url)
    except OSError:
        return False
    return True


def test_flower_refuses_requests_without_the_password(database_url: str, redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    auth = flower_env(tmp_path)
    with open(tmp_path / "flower.log", "ab") as log:
        proc = subprocess.Popen(
            flower_command(port),
            cwd=ROOT,
            env={**service_env(database_url, redis_url), **auth},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: proc.poll() is None and _answers(base + "/healthcheck"), 60, "Flower listening")
        assert _get(base + "/") == 401
        assert _get(base + "/api/workers") == 401
        assert _get(base + "/", f"{FLOWER_USER}:wrong") == 401
        assert _get(base + "/", auth["FLOWER_BASIC_AUTH"]) == 200
    finally:
        stop_process(proc)
