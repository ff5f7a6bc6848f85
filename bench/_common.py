"""Shared bench plumbing: services (DATABASE_URL/REDIS_URL or embedded), scratch databases, synthetic frames."""

from __future__ import annotations

import os
import random
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import psycopg2
from sqlalchemy.engine import make_url

from feed.embedded import EmbeddedPostgres, EmbeddedRedis
from models.schema import upgrade_to_head
from models.settings import normalise_database_url


def frames(n: int, *, seed: int = 1, depth: int = 20) -> list[str]:
    """n depth20 combined-stream frames over three symbols, in the shape of ../shared/limits/gen.py."""
    rnd = random.Random(seed)
    syms = [("btcusdt", 37000.0, 0.01), ("ethusdt", 2000.0, 0.01), ("bnbusdt", 300.0, 0.1)]
    out = []
    for i in range(n):
        sym, mid, tick = syms[i % 3]
        bids, asks = [], []
        pb = pa = 0
        for _ in range(depth):
            pb += 1 + rnd.randint(0, 3)
            pa += 1 + rnd.randint(0, 3)
            bids.append([f"{mid - tick * pb:.8f}", f"{rnd.lognormvariate(-2, 1.5):.8f}"])
            asks.append([f"{mid + tick * pa:.8f}", f"{rnd.lognormvariate(-2, 1.5):.8f}"])
        data = {"lastUpdateId": 1_000_000 + i, "bids": bids, "asks": asks}
        out.append(orjson.dumps({"stream": f"{sym}@depth{depth}", "data": data}).decode())
    return out


@contextmanager
def services() -> Iterator[tuple[str, str, Callable[[], str]]]:
    """(admin database URL, redis base URL, new_database()) from the environment or embedded servers."""
    stops: list[Callable[[], None]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bookfeed-bench-"))
    try:
        db = os.environ.get("DATABASE_URL")
        if db:
            admin = normalise_database_url(db)
        else:
            pg = EmbeddedPostgres(tmp / "pg", database="postgres")
            admin = pg.start()
            stops.append(pg.stop)
        r = os.environ.get("REDIS_URL")
        if r:
            base = r.rsplit("/", 1)[0] if r.count("/") > 2 else r
        else:
            rd = EmbeddedRedis(tmp / "redis")
            base = rd.start().rsplit("/", 1)[0]
            stops.append(rd.stop)
        created: list[str] = []

        def new_database() -> str:
            name = f"bookfeed_bench_{uuid.uuid4().hex[:8]}"
            _admin_exec(admin, f'CREATE DATABASE "{name}"')
            created.append(name)
            url = make_url(admin).set(database=name).render_as_string(hide_password=False)
            upgrade_to_head(url)
            return url

        yield admin, base, new_database
        for name in created:
            _admin_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        for stop in reversed(stops):
            stop()


def _admin_exec(admin: str, sql: str) -> None:
    conn = psycopg2.connect(admin.replace("postgresql+psycopg2://", "postgresql://"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)  # names we generated, never input
    conn.close()
