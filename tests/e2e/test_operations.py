"""Operations end to end: a real feed (run_feed), a real `celery worker` node and the simulator. Both /metrics
endpoints move during a run; a stalled stream shows in bookfeed_last_frame_age_seconds and makes `bookfeed status`
exit non-zero, and recovery brings it back to 0; every metric the alert rules and the dashboard use is exported."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from feed.service import run_feed
from models.settings import Settings
from simulator import SimConfig, SimulatorThread
from stack.cli import main
from stack.harness import free_port
from stack.status import DOWN, HEALTHY
from tests.conftest import BROKER_PREFIX, empty_data_tables, service_env
from tests.services import start_process, stop_process, wait_for
from tests.unit.test_monitoring import metric_names_used
from workers.commands import worker_command

pytestmark = pytest.mark.e2e

STREAMS = ("btcusdt@depth20@100ms", "ethusdt@depth20@100ms")
STALLED = STREAMS[1]
STALE_S = 3.0  # BOOKFEED_STATUS_STALE_S for this run: a stream with no book stored for 3 s is stale


@dataclass
class Pipeline:
    sim: SimulatorThread
    feed_port: int
    worker_port: int
    env: dict[str, str]
    metrics_dir: Path
    worker_pid: int


Sample = tuple[str, dict[str, str], float]


def scrape(port: int) -> list[Sample]:
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(body) for s in f.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())


@pytest.fixture(scope="module")
def pipeline(
    engine: Engine, database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    # This module's data only: the status reads every symbol stored lately, its gaps and its newest averages (an
    # earlier module's month-old average windows are "the newest window ended a month ago", a degraded state).
    empty_data_tables(engine)
    prefix = f"{BROKER_PREFIX}ops-{uuid.uuid4().hex[:6]}:"  # queues, stats and pings of this module alone
    feed_port, worker_port = free_port(), free_port()
    tmp = tmp_path_factory.mktemp("worker-tmp")  # where the node makes its metrics directory
    env = service_env(
        database_url,
        redis_url,
        BOOKFEED_BROKER_KEY_PREFIX=prefix,
        BOOKFEED_WORKER_METRICS_PORT=str(worker_port),
        BOOKFEED_STATUS_STALE_S=str(STALE_S),
        TMPDIR=str(tmp),
    )
    log = tmp_path_factory.mktemp("ops") / "worker.log"
    worker = start_process(
        worker_command(concurrency=2, name=f"ops-{uuid.uuid4().hex[:6]}"), env, log, ready=b"ready.", what="worker"
    )
    stop = threading.Event()
    try:
        with SimulatorThread(SimConfig(symbols=("BTCUSDT", "ETHUSDT"), seed=5)) as sim:
            settings = Settings(
                url=sim.url(list(STREAMS)),
                redis_url=redis_url,
                broker_key_prefix=prefix,
                metrics_port=feed_port,
                stall_timeout_s=2.0,
            )
            feed = threading.Thread(target=run_feed, args=(settings,), kwargs={"stop": stop, "install_signals": False})
            feed.start()
            try:
                (metrics_dir,) = tmp.glob("bookfeed-worker-metrics-*")
                yield Pipeline(sim, feed_port, worker_port, env, metrics_dir, worker.pid)
            finally:
                stop.set()
                feed.join(30)
    finally:
        stop_process(worker)
    assert not list(tmp.glob("bookfeed-worker-metrics-*")), "the node left its metrics directory behind"


REPORTS: list[dict[str, object]] = []  # the last `bookfeed status --json` (shown when a wait fails)


def _status(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> int:
    for k, v in env.items():
        if k.startswith("BOOKFEED_") or k in ("DATABASE_URL", "REDIS_URL"):
            monkeypatch.setenv(k, v)
    code = main(["status", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["state"] == ("healthy", "degraded", "down")[code]
    REPORTS[:] = [report]
    return code


def test_feed_and_worker_counters_move_during_a_run(pipeline: Pipeline) -> None:
    wait_for(lambda: value(scrape(pipeline.worker_port), "bookfeed_frames_stored_total") > 0, what="books stored")
    feed0, worker0 = scrape(pipeline.feed_port), scrape(pipeline.worker_port)

    def moved() -> bool:
        feed1, worker1 = scrape(pipeline.feed_port), scrape(pipeline.worker_port)
        return all(
            value(feed1, "bookfeed_frames_received_total", stream=s)
            > value(feed0, "bookfeed_frames_received_total", stream=s)
            for s in STREAMS
        ) and value(worker1, "bookfeed_frames_stored_total") > value(worker0, "bookfeed_frames_stored_total")

    wait_for(moved, what="feed and worker counters moving")
    feed, worker = scrape(pipeline.feed_port), scrape(pipeline.worker_port)
    assert value(feed, "bookfeed_connections_open") == 1
    assert value(feed, "bookfeed_publish_seconds_count") > 0
    assert value(worker, "bookfeed_batch_store_seconds_count") > 0
    assert value(worker, "bookfeed_receive_to_commit_seconds_count") > 0
    assert value(worker, "bookfeed_worker_processes") == 2  # the pool, summed over its processes


def test_a_stalled_stream_shows_and_makes_status_fail_until_it_recovers(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        wait_for(lambda: _status(monkeypatch, capsys, pipeline.env) == HEALTHY, what="status healthy before the stall")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last report {REPORTS}") from None
    pipeline.sim.stall(STALE_S * 3, stream=STALLED)

    def age(stream: str) -> float:
        return value(scrape(pipeline.feed_port), "bookfeed_last_frame_age_seconds", stream=stream)

    wait_for(lambda: age(STALLED) > STALE_S, what="the stalled stream's last-frame age growing")
    assert age(STREAMS[0]) < STALE_S  # the other stream goes on
    try:
        wait_for(lambda: HEALTHY < _status(monkeypatch, capsys, pipeline.env) < DOWN, what="status degraded")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last report {REPORTS}") from None
    main(["status"])
    assert "ETHUSDT" in capsys.readouterr().out
    wait_for(lambda: _status(monkeypatch, capsys, pipeline.env) == HEALTHY, what="status healthy after the stall")
    assert age(STALLED) < STALE_S


def test_every_metric_of_the_rules_and_the_dashboard_is_exported(pipeline: Pipeline) -> None:
    wait_for(lambda: value(scrape(pipeline.worker_port), "bookfeed_frames_stored_total") > 0, what="books stored")
    exported = {name for name, _, _ in scrape(pipeline.feed_port) + scrape(pipeline.worker_port)}
    used = metric_names_used()
    assert used, "no metric found in monitoring/"
    assert sorted(used - exported) == []


def test_worker_node_has_its_own_metrics_directory_and_exports_the_queues(pipeline: Pipeline) -> None:
    samples = scrape(pipeline.worker_port)
    assert len(list(pipeline.metrics_dir.glob("counter_*.db"))) >= 2  # the main process and its pool's
    assert value(samples, "bookfeed_broker_up") == 1
    assert ("bookfeed_queue_depth", {"queue": "ingest"}) in [(n, lab) for n, lab, _ in samples]


def test_a_killed_pool_process_stops_counting_as_alive(pipeline: Pipeline) -> None:
    psutil = pytest.importorskip("psutil")
    children = psutil.Process(pipeline.worker_pid).children()
    assert len(children) == 2
    wait_for(lambda: value(scrape(pipeline.worker_port), "bookfeed_worker_processes") == 2, what="2 pool processes")
    stored = value(scrape(pipeline.worker_port), "bookfeed_frames_stored_total")
    children[0].kill()  # no worker_process_shutdown: the node marks it dead at the next scrape

    def replaced() -> bool:
        pids = {c.pid for c in psutil.Process(pipeline.worker_pid).children()}
        return len(pids) == 2 and children[0].pid not in pids

    wait_for(replaced, what="the pool replacing the killed process")
    wait_for(lambda: value(scrape(pipeline.worker_port), "bookfeed_worker_processes") == 2, what="2 alive again")
    assert value(scrape(pipeline.worker_port), "bookfeed_frames_stored_total") >= stored  # the dead one's count stays
