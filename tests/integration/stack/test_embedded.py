"""The embedded servers are private to the user who starts them: PostgreSQL's socket and directories are the server
user's alone from its first start; Redis requires a per-run password that no command line shows."""

from __future__ import annotations

import socket
import stat
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest
import redis

from stack.embedded import SOCKET_PERMISSIONS_LINE, EmbeddedPostgres, EmbeddedRedis

pytestmark = pytest.mark.integration


def test_socket_and_data_directories_are_private(tmp_path: Path) -> None:
    # A data path too long for a Unix socket path: pgserver then puts the socket in a runtime directory, which it
    # makes world-writable (0777) when run as root. The server trusts every local connection.
    pg = EmbeddedPostgres(tmp_path / ("d" * 80) / "pg", database="postgres")
    url = pg.start()
    try:
        socket_dir, socket_path = pg.socket_dir(), pg.socket_path()
        assert socket_dir is not None and socket_path is not None
        assert len(str(pg.data_dir / ".s.PGSQL.5432")) > 107 and socket_dir != pg.data_dir.resolve()
        for path in (socket_dir, pg.data_dir):
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == 0o700, f"{path}: {oct(mode)}"
            # Owned by the server's user: pgserver's `pgserver` system user when run as root, else ourselves.
            assert path.stat().st_uid == (pg.data_dir / "PG_VERSION").stat().st_uid
        # The socket itself was created 0700 by the server (postgresql.conf, before its first start): nobody
        # else could connect during the moment the directory was still 0777.
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o700
        # Still reachable by the user who started it.
        conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))
        with conn.cursor() as cur:
            cur.execute("SHOW unix_socket_permissions")
            assert cur.fetchone() == ("0700",)
        conn.close()
        pg.pause()
        pg.resume()  # pgserver makes the directory 0777 again on every start
        assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o700
        assert (pg.data_dir / "postgresql.conf").read_text().count(SOCKET_PERMISSIONS_LINE) == 1
    finally:
        pg.stop()


def _raw(port: int, command: bytes) -> bytes:
    """One inline command on a fresh connection, as any local user could send it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(command + b"\r\n")
        return s.recv(200)


def test_redis_refuses_anyone_without_the_runs_password(tmp_path: Path) -> None:
    rd = EmbeddedRedis(tmp_path / "redis")
    url = rd.start()
    try:
        password = urlsplit(url).password
        assert password and len(password) >= 32
        assert _raw(rd.port, b"PING").startswith(b"-NOAUTH")
        assert _raw(rd.port, b"CONFIG SET dir /tmp").startswith(b"-NOAUTH")
        assert _raw(rd.port, b"LPUSH ingest x").startswith(b"-NOAUTH")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=rd.port).ping()
        # Never on the command line, which every local user can read.
        assert rd._proc is not None
        assert password.encode() not in Path(f"/proc/{rd._proc.pid}/cmdline").read_bytes()
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.config_set("maxmemory", "0")  # CONFIG stays available with the password (make chaos)
        client.close()
        rd.stop()
        assert rd.start() == url  # a restart keeps port and password: the URL children hold stays valid
        assert _raw(rd.port, b"PING").startswith(b"-NOAUTH")
        assert stat.S_IMODE(rd.data_dir.stat().st_mode) == 0o700
    finally:
        rd.stop()


def test_each_instance_has_its_own_password(tmp_path: Path) -> None:
    assert EmbeddedRedis(tmp_path / "a").password != EmbeddedRedis(tmp_path / "b").password
