"""bench._common.services(): the databases a bench made are dropped and its temporary folder removed, also when the
bench fails half-way (a bench cut short must leave nothing on a shared server)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy.engine import make_url

from bench._common import services

pytestmark = pytest.mark.integration


class _Stop(Exception):
    pass


def _exists(admin_url: str, name: str) -> bool:
    conn = psycopg2.connect(admin_url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def test_a_failing_bench_leaves_no_database_and_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # tempfile.mkdtemp puts the bench's folder here
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    with pytest.raises(_Stop), services() as (admin_url, _, new_database):
        name = make_url(new_database()).database
        assert name is not None and _exists(admin_url, name)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith("bookfeed-bench-")]
        raise _Stop
    # Without DATABASE_URL the bench ran its own embedded server inside its folder: gone with the folder.
    if str(tmp_path) not in admin_url:
        assert not _exists(admin_url, name)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("bookfeed-bench-")]
