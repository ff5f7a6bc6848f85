"""Test services: PostgreSQL and Redis from DATABASE_URL / REDIS_URL when set, embedded servers otherwise.

Each run works in its own fresh database (migrated once) and its own Redis database number (flushed), so a run
never touches data it did not make."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from sqlalchemy.engine import make_url

from feed.embedded import EmbeddedPostgres, EmbeddedRedis
from models.settings import normalise_database_url

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Services:
    admin_url: str  # SQLAlchemy URL of a database we may CREATE DATABASE from
    redis_base: str  # redis://host:port (no db)
    stoppers: list

    def close(self) -> None:
        for stop in self.stoppers:
            stop()


def start_services(tmp: Path) -> Services:
    stoppers = []
    db = os.environ.get("DATABASE_URL")
    if db:
        admin = normalise_database_url(db)
    else:
        pg = EmbeddedPostgres(tmp / "pg", database="postgres")
        admin = pg.start()
        stoppers.append(pg.stop)
    r = os.environ.get("REDIS_URL")
    if r:
        p = urlsplit(r)
        base = urlunsplit((p.scheme, p.netloc, "", "", ""))
    else:
        rd = EmbeddedRedis(tmp / "redis")
        base = rd.start().rsplit("/", 1)[0]
        stoppers.append(rd.stop)
    return Services(admin, base, stoppers)


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg2://", "postgresql://")


def create_database(admin_url: str, prefix: str = "bookfeed_test") -> str:
    """A new empty database next to `admin_url`; returns its SQLAlchemy URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(_libpq(admin_url))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')  # a name we made, never input
    conn.close()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    name = make_url(url).database
    conn = psycopg2.connect(_libpq(admin_url))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def start_worker(env: dict[str, str], log: Path, *, concurrency: int = 2, name: str = "test") -> subprocess.Popen:
    """A real `celery -A workers worker` process; returns once it answers a ping."""
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers",
        "worker",
        "-Q",
        "ingest,metrics",
        "-c",
        str(concurrency),
        "-n",
        f"{name}-{uuid.uuid4().hex[:6]}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    with open(log, "ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}: {log.read_text()[-3000:]}")
        if b"ready." in log.read_bytes():
            return proc
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"worker did not become ready: {log.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
