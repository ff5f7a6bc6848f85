"""Live-push latency: commit of a batch -> its first book's metrics received by a websocket client of
`WS /v1/live`. A `bookfeed api` process of its own; this process stores batches with workers.ingest.ingest_batch and
publishes each after commit with workers.live.LivePublisher, as a worker does. Figures, never a CI gate.

    python -m bench.bench_live [batches] [books per batch]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis
from sqlalchemy import create_engine
from websockets.sync.client import connect

from bench._common import frames, services
from models.book import parse_frame
from models.messages import make_batch
from models.metrics import book_metrics
from stack.harness import ROOT, free_port, log_line, start_process, stop_process
from workers.ingest import ingest_batch
from workers.live import LivePublisher


def run(n_batches: int = 300, per_batch: int = 10) -> dict[str, Any]:
    data = frames(n_batches * per_batch, seed=7)
    prefix = f"bench-live-{uuid.uuid4().hex[:8]}:"
    with services() as (_, redis_base, new_database):
        url, redis_url = new_database(), f"{redis_base}/13"
        engine = create_engine(url)
        port = free_port()
        env = {"DATABASE_URL": url, "REDIS_URL": redis_url, "BOOKFEED_BROKER_KEY_PREFIX": prefix}
        log = Path(tempfile.mkdtemp(prefix="bench-live-")) / "api.log"
        api = start_process(
            [sys.executable, "-m", "stack.cli", "api", "--port", str(port)],
            log=log,
            env={**os.environ, **env},
            name="api",
            ready=log_line(b"Uvicorn running"),
            timeout=60,
            cwd=ROOT,
        ).popen
        publisher = LivePublisher(redis.Redis.from_url(redis_url), key_prefix=prefix)
        received: dict[int, float] = {}
        try:
            with connect(f"ws://127.0.0.1:{port}/v1/live", open_timeout=30) as ws:
                ws.recv(timeout=30)  # {"subscribed": "all"}

                def _receive() -> None:
                    for _ in range(n_batches * per_batch):
                        item = orjson.loads(ws.recv(timeout=30))
                        received.setdefault(item["last_update_id"], time.perf_counter())

                reader = threading.Thread(target=_receive, daemon=True)
                reader.start()
                committed: dict[int, float] = {}
                publish_s: list[float] = []
                for k in range(n_batches):
                    chunk = data[k * per_batch : (k + 1) * per_batch]
                    pairs = [(time.time_ns(), f) for f in chunk]
                    # Parsed beforehand, as the worker has them when it commits.
                    books = [(b, book_metrics(b)) for b in (parse_frame(f, received_ns=ns) for ns, f in pairs)]
                    ingest_batch(engine, make_batch(batch_id=f"{prefix}{k}", frames=pairs))
                    t_commit = time.perf_counter()
                    publisher.publish("binance", books)
                    publish_s.append(time.perf_counter() - t_commit)
                    committed[books[0][0].last_update_id] = t_commit
                    time.sleep(0.02)  # a batch every ~20 ms plus the commit: not a saturation test
                reader.join(60)
        finally:
            publisher.close()
            stop_process(api)
            engine.dispose()
    lat_ms = sorted((received[luid] - t) * 1000 for luid, t in committed.items() if luid in received)
    return {
        "batches": n_batches,
        "books per batch": per_batch,
        "pushed": len(lat_ms),
        "commit->ws p50 ms": statistics.median(lat_ms),
        "commit->ws p99 ms": lat_ms[int(len(lat_ms) * 0.99) - 1],
        "commit->ws max ms": lat_ms[-1],
        "publish (JSON + PUBLISH) p50 ms": statistics.median(publish_s) * 1000,
    }


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    for key, value in run(*args).items():
        print(f"{key:>40}: {value:.2f}" if isinstance(value, float) else f"{key:>40}: {value}")
