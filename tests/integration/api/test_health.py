"""GET /v1/health on a real uvicorn, Redis and PostgreSQL: the queues and the outbox as the workers' own reader
(workers.metrics.queue_state) sees them, each symbol's newest book, the state and its problems in the shape of
`bookfeed status --json`; the Redis key names the API keeps equal to workers.outbox's."""

from __future__ import annotations

import json
import re
import time
import uuid
from types import SimpleNamespace

import httpx
import pytest
import redis
from sqlalchemy import Engine

from api.health import redis_keys
from api.main import create_app
from feed.broker import CelerySender
from models.feedstats import STATS_PREFIX
from models.messages import make_batch
from models.vocabulary import QUEUES
from tests.integration._frames import frame
from tests.integration.api.conftest import serve, settings
from workers.ingest import ingest_batch
from workers.metrics import queue_state
from workers.outbox import OutboxKeys

pytestmark = pytest.mark.integration

NS = 10**9


def test_the_redis_keys_are_the_outbox_s() -> None:
    for prefix in ("", "deploy-1:"):
        ours, theirs = redis_keys(prefix), OutboxKeys(prefix)
        assert (ours.payload, ours.seq, ours.unacked) == (theirs.payload, theirs.seq, theirs.unacked)
        assert ours.queues == tuple(prefix + q for q in QUEUES) and theirs.queue in ours.queues


def _book(symbol: str, received_ns: int, luid: int) -> tuple[int, str]:
    return received_ns, frame(symbol, luid=luid, bids=[("100.5", "1")], asks=[("100.75", "2")])


@pytest.fixture
def backlog(redis_url: str, broker_prefix: str) -> tuple[str, int]:
    """Two batches waiting in the outbox and the ingest queue of a prefix of their own (nobody consumes them), the
    oldest received 100 s ago."""
    prefix = f"{broker_prefix}health-{uuid.uuid4().hex[:8]}:"
    now = time.time_ns()
    with CelerySender(redis_url, key_prefix=prefix) as send:
        for k, age_s in enumerate((100, 20)):
            received = now - age_s * NS
            send(SimpleNamespace(batch=make_batch(batch_id=f"h{k}", frames=[_book("btcusdt", received, k)])))
    return prefix, now


def test_health_reports_the_queues_and_the_newest_books(
    recorded: Engine, reader: Engine, redis_url: str, backlog: tuple[str, int]
) -> None:
    prefix, now = backlog
    # A fresh ETHUSDT book (a minute ahead: it stays fresh however slow the test) and a SOLUSDT one 5 minutes old.
    store = [_book("ethusdt", now + 60 * NS, 90_001), _book("solusdt", now - 300 * NS, 90_002)]
    ingest_batch(recorded, make_batch(batch_id=f"health-{uuid.uuid4().hex[:8]}", frames=store))
    app = create_app(settings(redis_url, prefix), engine=reader, health_ttl_s=0)
    client = redis.Redis.from_url(redis_url)
    # A running feed's stats (written every second) and a stopped one's last, as feed.service writes them.
    feeds = {"feedA1": time.time(), "feedB2": time.time() - 60}
    for feed_id, ts in feeds.items():
        client.set(prefix + STATS_PREFIX + feed_id, json.dumps({"feed_id": feed_id, "ts": ts, "connected": True}))
    try:
        with serve(app) as base, httpx.Client(base_url=base, timeout=30) as api:
            resp = api.get("/v1/health")
            assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
            body = resp.json()
            assert "/v1/health" in api.get("/openapi.json").json()["paths"]  # how the live page finds it
        workers_view = queue_state(client, prefix)
    finally:
        client.delete(*redis_keys(prefix).queues, *OutboxKeys(prefix).enqueue_keys())
        client.delete(*(prefix + STATS_PREFIX + feed_id for feed_id in feeds))
        client.close()
    assert body["queues"] == workers_view.depth == {"ingest": 2, "metrics": 0, "maintenance": 0}
    assert body["queue_depth"] == sum(workers_view.depth.values()) + workers_view.unacked == 2
    assert body["outbox"] == workers_view.outbox == 2 and body["unacked"] == 0
    assert body["oldest_batch_age_s"] >= 100
    # BTCUSDT and ETHUSDT of the `recorded` fixture are a month old: outside the window looked at.
    assert [(s["symbol"], s["stale"]) for s in body["symbols"]] == [("ETHUSDT", False), ("SOLUSDT", True)]
    assert body["database_lag_s"] == 0.0  # the freshest book's age (received "in the future": 0)
    assert body["feeds"] == 1  # the stopped feed's stats are not a feed
    assert body["workers_alive"] is None  # a Celery ping per probe: only `bookfeed status` pings
    assert body["state"] == "degraded"
    assert len(body["problems"]) == 2
    assert re.fullmatch(r"the oldest waiting batch is \d+ s old", body["problems"][0])
    assert body["problems"][1].startswith("1 of 2 symbols stale (no book stored lately): SOLUSDT (")


def test_health_is_down_and_still_answers_when_redis_does_not(recorded: Engine, reader: Engine) -> None:
    app = create_app(settings("redis://127.0.0.1:1/0", "nowhere:"), engine=reader, health_ttl_s=0)
    with serve(app) as base, httpx.Client(base_url=base, timeout=30) as api:
        body = api.get("/v1/health").json()
    assert body["state"] == "down"
    assert body["problems"][0].startswith("Redis does not answer")
    assert body["queue_depth"] is None and body["oldest_batch_age_s"] is None
    assert body["symbols"] is not None  # PostgreSQL was still read
