"""Embedded PostgreSQL (pgserver): its socket and data directories are the server user's alone."""

from __future__ import annotations

import stat
from pathlib import Path

import psycopg2
import pytest

from feed.embedded import EmbeddedPostgres

pytestmark = pytest.mark.integration


def test_socket_and_data_directories_are_private(tmp_path: Path) -> None:
    # A data path too long for a Unix socket path: pgserver then puts the socket in a runtime directory, which it
    # makes world-writable (0777) when run as root. The server trusts every local connection.
    pg = EmbeddedPostgres(tmp_path / ("d" * 80) / "pg", database="postgres")
    url = pg.start()
    try:
        socket_dir = pg.socket_dir()
        assert socket_dir is not None
        assert len(str(pg.data_dir / ".s.PGSQL.5432")) > 107 and socket_dir != pg.data_dir.resolve()
        for path in (socket_dir, pg.data_dir):
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == 0o700, f"{path}: {oct(mode)}"
            # Owned by the server's user: pgserver's `pgserver` system user when run as root, else ourselves.
            assert path.stat().st_uid == (pg.data_dir / "PG_VERSION").stat().st_uid
        # Still reachable by the user who started it.
        conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))
        conn.close()
        pg.pause()
        pg.resume()  # pgserver makes the directory 0777 again on every start
        assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    finally:
        pg.stop()
