"""Recorded books for the API tests, stored through the real ingest path (workers.ingest) into the run's database,
and the API app on an engine that is the reader role (views only) in read-only transactions."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, event

from api.main import create_app, make_engine
from models.messages import make_batch
from models.settings import Settings
from tests.conftest import empty_data_tables
from tests.integration._frames import frame
from workers.averages import compute_averages
from workers.ingest import ingest_batch

NS = 10**9
T0_S = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())  # a closed past day, inside the partition guard
T0 = T0_S * NS + 123_456_789  # sub-microsecond digits: stored truncated to the microsecond
N_BTC = 250
TIE = 48  # books TIE and TIE + 1 share one received_at: last_update_id orders them (and a page boundary falls there)


@dataclass(frozen=True)
class Sent:
    """A book as the test sent it, and as the API must give it back."""

    symbol: str
    received_ns: int
    last_update_id: int
    bids: list[list[str]]
    asks: list[list[str]]

    @property
    def received_at(self) -> str:
        secs, rem = divmod(self.received_ns, NS)
        return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{rem // 1000:06d}Z"

    def as_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "received_at": self.received_at,
            "last_update_id": self.last_update_id,
            "bids": self.bids,
            "asks": self.asks,
        }


def _btc(i: int) -> Sent:
    ns = T0 + (i - 1 if i == TIE + 1 else i) * NS
    # Scales kept as sent: 8 decimals, trailing zeros, a quantity of one satoshi.
    bids = [[f"{40000 + i}.98000000", "0.00000001"], [f"{40000 + i}.50000000", "12.00000000"]]
    asks = [[f"{40000 + i}.99000000", "1.32492400"], [f"{40001 + i}.00000000", "0.00099900"]]
    return Sent("BTCUSDT", ns, 1_000_000 + i, bids, asks)


def _eth(i: int) -> Sent:
    return Sent("ETHUSDT", T0 + i * 60 * NS + 5, 7_000 + i, [["2000.5", "0.1234"]], [["2000.75", "3"]])


BTC = [_btc(i) for i in range(N_BTC)]
ETH = [_eth(i) for i in range(3)]
GAP = ("btcusdt@depth20@100ms", T0_S * NS + 10 * NS, T0_S * NS + 20 * NS, "stalled")
JUNK_NS = T0 + 5 * NS + 1_000


def _raw(s: Sent) -> str:
    return frame(
        s.symbol.lower(), luid=s.last_update_id, bids=[(p, q) for p, q in s.bids], asks=[(p, q) for p, q in s.asks]
    )


def store(engine: Engine, books: list[Sent], *, batch_id: str, **extra: Any) -> None:
    result = ingest_batch(
        engine, make_batch(batch_id=batch_id, frames=[(b.received_ns, _raw(b)) for b in books], **extra)
    )
    assert not result.duplicate


@pytest.fixture(scope="module")
def recorded(engine: Engine) -> Engine:
    """BTC, ETH, one gap, one rejected frame and the 30 s / 60 s averages, in a database emptied first."""
    empty_data_tables(engine)
    for k in range(0, N_BTC, 100):
        store(engine, BTC[k : k + 100], batch_id=f"api-btc-{k}")
    ingest_batch(
        engine,
        make_batch(
            batch_id="api-eth", frames=[(b.received_ns, _raw(b)) for b in ETH] + [(JUNK_NS, "junk")], gaps=[GAP]
        ),
    )
    for w in (30, 60):
        compute_averages(engine, window_s=w, now_s=T0_S + 600, grace_s=5, lookback_s=600)
    return engine


@pytest.fixture(scope="module")
def reader(database_url: str) -> Iterator[Engine]:
    """The API's engine as the reader role: any read of a table behind the views fails."""
    eng = make_engine(database_url)

    @event.listens_for(eng, "connect")
    def _as_reader(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute("SET ROLE bookfeed_reader")

    yield eng
    eng.dispose()


def settings(redis_url: str, broker_prefix: str, **overrides: Any) -> Settings:
    return Settings(redis_url=redis_url, broker_key_prefix=broker_prefix, **overrides)


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """A real uvicorn serving `app` on a free port of 127.0.0.1 in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on", ws="websockets-sansio"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def api(recorded: Engine, reader: Engine, redis_url: str, broker_prefix: str) -> Iterator[httpx.Client]:
    app = create_app(
        settings(redis_url, broker_prefix, api_max_limit=50, api_max_range_s=3 * 86_400), engine=reader, symbols_ttl_s=0
    )
    with serve(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client
