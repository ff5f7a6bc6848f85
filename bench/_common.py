"""Shared bench plumbing: services (DATABASE_URL/REDIS_URL or embedded), scratch databases, synthetic frames."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

from stack.embedded import start_servers
from workers.schema import upgrade_to_head


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
    """(admin database URL, redis base URL, new_database()) from DATABASE_URL/REDIS_URL or embedded servers;
    the databases made with new_database() are migrated, and dropped at the end (also when the body fails)."""
    work = Path(tempfile.mkdtemp(prefix="bookfeed-bench-"))  # the embedded servers' data: removed at the end
    servers = start_servers(work, database_url=os.environ.get("DATABASE_URL"), redis_url=os.environ.get("REDIS_URL"))
    created: list[str] = []

    def new_database() -> str:
        url = servers.create_database(prefix="bookfeed_bench")
        created.append(url)
        upgrade_to_head(url)
        return url

    try:
        yield servers.admin_url, servers.redis_base, new_database
    finally:
        for url in created:
            with contextlib.suppress(Exception):  # a server already gone has nothing left to drop
                servers.drop_database(url)
        servers.close()
        shutil.rmtree(work, ignore_errors=True)
