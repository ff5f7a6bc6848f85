"""A stream that once received lastUpdateId 9999999999999999999 goes on being stored, frame for frame, and a server
that resumes a few updates behind after a reconnect is not stored twice: the real feed (run_feed) reads an in-test
websocket server and publishes to Redis, the real worker stores in PostgreSQL. The feed's start and stop are
recorded as gaps of the stream."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from websockets.sync.server import Server, ServerConnection, serve

from feed.service import run_feed
from models.settings import Settings
from tests.factories import make_frame
from tests.services import wait_for

pytestmark = pytest.mark.integration

ABSURD = 9999999999999999999  # beyond 2**63 - 1
IDS = [*range(1001, 1011), ABSURD, *range(1011, 1021)]
FRAMES = [make_frame("btcusdt", 20, speed=None, last_update_id=i) for i in IDS]


@contextlib.contextmanager
def _serving(handler: Callable[[ServerConnection], None]) -> Iterator[Server]:
    """An in-test websocket server on a free loopback port, served from a thread."""
    with serve(handler, "127.0.0.1", 0) as srv:
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        yield srv
        srv.shutdown()
        thread.join(10)


@contextlib.contextmanager
def _feeding(server: Server, redis_url: str, broker_prefix: str) -> Iterator[None]:
    """The real feed (run_feed) on btcusdt@depth20 of `server`, in a thread, stopped on exit."""
    port = server.socket.getsockname()[1]
    settings = Settings(
        url=f"ws://127.0.0.1:{port}/stream?streams=btcusdt@depth20",
        redis_url=redis_url,
        broker_key_prefix=broker_prefix,
    )
    stop = threading.Event()
    feed = threading.Thread(target=run_feed, args=(settings,), kwargs={"stop": stop, "install_signals": False})
    feed.start()
    try:
        yield
    finally:
        stop.set()
        feed.join(30)


def _stored(db: Engine) -> list[int]:
    with db.connect() as conn:
        q = "SELECT last_update_id FROM book_snapshots WHERE symbol = 'BTCUSDT' ORDER BY last_update_id"
        return [int(i) for i in conn.execute(text(q)).scalars()]


def _rejected(db: Engine) -> list[str]:
    with db.connect() as conn:
        return list(conn.execute(text("SELECT raw FROM rejected_frames")).scalars())


def _reasons(db: Engine) -> set[str]:
    with db.connect() as conn:
        return set(conn.execute(text("SELECT reason FROM feed_gaps WHERE stream = 'btcusdt@depth20'")).scalars())


@pytest.fixture
def server() -> Iterator[Server]:
    def handler(ws: ServerConnection) -> None:
        for raw in FRAMES:
            ws.send(raw)
        for _ in ws:  # keep the connection open until the feed closes it
            pass

    with _serving(handler) as srv:
        yield srv


def test_a_stream_that_received_an_absurd_id_goes_on_being_stored(
    server: Server, redis_url: str, broker_prefix: str, worker: Path, clean_db: Engine
) -> None:
    with _feeding(server, redis_url, broker_prefix):
        valid = [i for i in IDS if i != ABSURD]
        wait_for(
            lambda: _stored(clean_db) == valid and len(_rejected(clean_db)) == 1, 30, "every frame stored or rejected"
        )
        assert _rejected(clean_db) == [FRAMES[IDS.index(ABSURD)]]

    # The windows in which the feed started and stopped are incomplete (a previous test's feed may have left a
    # last-seen time under this run's key prefix: then it is a restart).
    wait_for(lambda: "feed stopped" in _reasons(clean_db), 30, "the feed-stopped gap")
    assert _reasons(clean_db) & {"feed started", "feed restarted"}


@pytest.fixture
def lagging_server() -> Iterator[Server]:
    """First connection: 1000..1002, then closed. Every later one: 1000..1003 (two updates behind), kept open."""
    connections: list[ServerConnection] = []

    def handler(ws: ServerConnection) -> None:
        connections.append(ws)
        first = len(connections) == 1
        for luid in range(1000, 1003 if first else 1004):
            ws.send(make_frame("btcusdt", 20, speed=None, last_update_id=luid))
        if first:
            ws.close()
            return
        for _ in ws:
            pass

    with _serving(handler) as srv:
        yield srv


def test_a_server_behind_after_a_reconnect_is_not_stored_twice(
    lagging_server: Server, redis_url: str, broker_prefix: str, worker: Path, clean_db: Engine
) -> None:
    with _feeding(lagging_server, redis_url, broker_prefix):
        wait_for(lambda: 1003 in _stored(clean_db), 30, "the second connection's new book")
    wait_for(lambda: _reasons(clean_db) >= {"feed stopped"}, 30, "the feed-stopped gap")  # everything is in
    assert _stored(clean_db) == [1000, 1001, 1002, 1003]
    assert not any(r.startswith("lastUpdateId reset") for r in _reasons(clean_db))
