"""The whole-market scenario of `make bench`: the simulator serving N symbols at depth20@100ms, the feed (or several
shards) subscribing `--symbols all`, Redis, PostgreSQL and a Celery worker node with W processes (and beat), all
on this machine, as `bookfeed up --symbols all --speed 100ms` runs them. Sampled once a second: frames offered,
received, stored; the queue; CPU per component; batches as they commit. Then: drain time after the feed stops,
receive->committed percentiles, bytes per stored snapshot over every table, index and TOAST. Last, the capacity
phase: the stored rate above can never pass the offered load, so the worker node is stopped, the simulator and feeds
queue a backlog, stop, a CHECKPOINT runs (as before each bare COPY round), and the node (started again, alone with
beat) is timed while it drains that backlog."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Connection, create_engine, text

from bench import probes
from bench.copy_limit import checkpoint
from bench.probes import MACHINE
from bench.report import (
    BatchRow,
    bucket_sum,
    drain_rate,
    latency_series,
    middle_rate,
    rate_between,
    rates,
    weighted_percentiles,
)
from stack.harness import ROOT, Harness, beat_command, bookfeed_command, feed_command, free_port, log_line
from workers.commands import worker_command

__all__ = [
    "CAPACITY",
    "CAPACITY_MIDDLE",
    "Drain",
    "Scenario",
    "run_scenario",
    "storage_bytes",
    "summarise",
    "summarise_capacity",
]

OTHERS = "other processes on the machine"
BENCH = "bench (this process)"
_NOT_PIPELINE = frozenset({BENCH, OTHERS})
_POLL_S = 0.25  # how often committed batches are read
_SIM_FLAGS = ("--not-trading", "0", "--seed", "1")  # every made-up symbol trades; the same market each run
CAPACITY = "stored frames/s draining the backlog (first commit to last commit)"
CAPACITY_MIDDLE = "stored frames/s, middle 80 % of the backlog (by transaction start)"


@dataclass(frozen=True, slots=True)
class Scenario:
    symbols: int = 1500
    speed: str = "100ms"
    workers: int = 2
    shards: int = 1
    warmup_s: float = 20.0
    duration_s: float = 60.0
    drain_timeout_s: float = 300.0
    sample_s: float = 1.0
    batch_frames: int | None = None  # BOOKFEED_BATCH_MAX_FRAMES for the feeds (None: the setting's default)
    backlog_s: float = 60.0  # capacity phase: seconds the feeds queue frames with the worker node stopped (0: none)

    @property
    def label(self) -> str:
        batches = "" if self.batch_frames is None else f", batches of {self.batch_frames}"
        return (
            f"{self.symbols} symbols @{self.speed}, {self.workers} worker process(es), {self.shards} feed(s){batches}"
        )

    @property
    def nominal_offered(self) -> float:
        return self.symbols * (10.0 if self.speed == "100ms" else 1.0)


@dataclass
class Sample:
    t: float
    offered: int
    received: int
    published: int
    queued_tasks: int
    pending_tasks: int
    cpu: dict[str, float]
    feed_t: float | None = None  # when the feeds wrote the counts read (their own clock); None: read at t


@dataclass
class Drain:
    """The capacity phase as run: how long the feeds queued frames, when the worker node was started again, when
    the queue was first seen empty (None: not within the drain timeout), the samples taken while it drained, and
    whether a CHECKPOINT ran just before the node started (False: the role may not; None: not asked)."""

    fill_s: float
    t_worker_start: float
    t_empty: float | None
    samples: list[Sample]
    checkpoint: bool | None = None


def _env(
    base: dict[str, str], *, db_url: str, redis_url: str, prefix: str, workdir: Path, sc: Scenario, port: int
) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith("BOOKFEED_")}
    env.update(
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        BOOKFEED_BROKER_KEY_PREFIX=prefix,
        BOOKFEED_DATA_DIR=str(workdir),
        BOOKFEED_LOG_FORMAT="text",
        BOOKFEED_SYMBOLS="all",
        BOOKFEED_DEPTH="20",
        BOOKFEED_SPEED=sc.speed,
        BOOKFEED_URL=f"ws://127.0.0.1:{port}",
        BOOKFEED_REST_URL=f"http://127.0.0.1:{port}",
        PYTHONUNBUFFERED="1",
    )
    if sc.batch_frames is not None:
        env["BOOKFEED_BATCH_MAX_FRAMES"] = str(sc.batch_frames)
    return env


def _sources(harness: Harness, rd: redis.Redis, conn: Connection) -> dict[str, Callable[[], Iterable[int]]]:
    def child(name: str) -> Callable[[], Iterable[int]]:
        return lambda: probes.tree(harness.children[name].pid) if name in harness.children else []

    feeds = [n for n in harness.children if n.startswith("feed")]
    redis_pid = probes.redis_pid(rd)
    sources: dict[str, Callable[[], Iterable[int]]] = {
        "simulator": child("simulator"),
        **{name: child(name) for name in feeds},
        "workers (node + pool)": child("worker"),
        "beat": child("beat"),
        "redis (whole server)": lambda: [redis_pid],
        "postgres backends (this database)": lambda: probes.postgres_pids(conn, ours=True),
        "postgres background (whole cluster)": lambda: probes.postgres_pids(conn, ours=False),
        BENCH: lambda: [os.getpid()],
    }
    return sources


def storage_bytes(conn: Connection) -> dict[str, Any]:
    """Bytes of every table in the schema (heap + indexes + TOAST, partitions counted under their parent) and
    per stored snapshot."""
    rows = conn.execute(
        text(
            "SELECT coalesce(p.relname, c.relname) AS name, sum(pg_total_relation_size(c.oid)), "
            "sum(pg_relation_size(c.oid)), sum(pg_indexes_size(c.oid)) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_inherits i ON i.inhrelid = c.oid LEFT JOIN pg_class p ON p.oid = i.inhparent "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' GROUP BY 1 ORDER BY 2 DESC"
        )
    ).all()
    snapshots = int(conn.execute(text("SELECT count(*) FROM book_snapshots")).scalar_one())
    tables = {str(r[0]): {"total": int(r[1]), "heap": int(r[2]), "indexes": int(r[3])} for r in rows}
    total = sum(t["total"] for t in tables.values())
    books = tables.get("book_snapshots", {"total": 0, "heap": 0, "indexes": 0})
    per = (lambda b: b / snapshots) if snapshots else (lambda b: 0.0)
    return {
        "snapshots": snapshots,
        "bytes_per_snapshot_all_tables": per(total),
        "bytes_per_snapshot_book_snapshots": per(books["total"]),
        "bytes_per_snapshot_heap_only": per(books["heap"]),
        "bytes_per_snapshot_indexes": per(books["indexes"]),
        "tables": tables,
    }


def _sample(sc_port: int, rd: redis.Redis, prefix: str, cpu: probes.CpuMeter) -> Sample:
    try:
        offered = probes.simulator_offered(sc_port)
    except OSError:
        offered = -1  # the simulator has stopped
    received, published, stamped = probes.feed_frames(rd, prefix)
    queued, pending = probes.queue_depth(rd, prefix)
    return Sample(time.time(), offered, received, published, queued, pending, cpu.sample(), stamped)


def _start_simulator(harness: Harness, sc: Scenario, port: int) -> None:
    harness.start(
        "simulator",
        bookfeed_command("simulate", "--port", str(port), "--random-symbols", str(sc.symbols), *_SIM_FLAGS),
        ready=log_line("listening on"),
    )


def _start_worker(harness: Harness, sc: Scenario, tag: str) -> None:
    harness.start("worker", worker_command(concurrency=sc.workers, name=f"bench-{tag}"), ready=log_line("ready."))


def _start_feeds(harness: Harness, sc: Scenario) -> None:
    for i in range(sc.shards):
        extra = {"BOOKFEED_SHARD": f"{i}/{sc.shards}"} if sc.shards > 1 else {}
        harness.start(f"feed-{i}", feed_command(), extra_env=extra)


def _stop_sources(harness: Harness, sc: Scenario) -> None:
    """Stop the feeds (each flushes its last batch) and then the simulator."""
    for i in range(sc.shards):
        harness.stop(f"feed-{i}", timeout=60)
    harness.stop("simulator")


def _drain(
    sample: Callable[[], Sample], poll: Callable[[], None], *, timeout_s: float, check: Callable[[], None]
) -> tuple[list[Sample], float | None]:
    """Sample and poll every _POLL_S until the broker holds no task in two samples in a row; (the samples, the time
    of the first of those two, or None after `timeout_s`)."""
    samples: list[Sample] = []
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        check()
        s = sample()
        samples.append(s)
        poll()
        if s.pending_tasks == 0 and len(samples) > 1 and samples[-2].pending_tasks == 0:
            return samples, samples[-2].t
        time.sleep(_POLL_S)
    return samples, None


def _capacity_phase(
    sc: Scenario,
    harness: Harness,
    *,
    tag: str,
    port: int,
    sample: Callable[[], Sample],
    poll: Callable[[], None],
    out: Callable[[str], None],
    checkpoint: Callable[[], bool],
) -> Drain:
    """With the queue empty: stop the worker node, let the simulator and feeds queue `sc.backlog_s` seconds of
    frames, stop them (so that, as for the bare COPY limit, nothing else competes for the cores), run `checkpoint`
    (as before each bare COPY round: no dirty pages nor WAL left from the run), start the node again with the same
    processes (beat keeps running) and sample until the queue is empty."""

    def check() -> None:
        problem = harness.exited()
        if problem:
            raise RuntimeError(problem)

    harness.stop("worker")
    _start_simulator(harness, sc, port)
    _start_feeds(harness, sc)
    t_fill = time.monotonic()
    out(f"  capacity phase: worker node stopped, the feed queues {sc.backlog_s:.0f} s of frames")
    while time.monotonic() - t_fill < sc.backlog_s:
        check()
        time.sleep(min(0.5, max(0.0, sc.backlog_s - (time.monotonic() - t_fill))))
    _stop_sources(harness, sc)
    fill_s = time.monotonic() - t_fill
    t_checkpoint = time.monotonic()
    done = checkpoint()
    how = f"CHECKPOINT in {time.monotonic() - t_checkpoint:.1f} s" if done else "CHECKPOINT not permitted, none ran"
    out(f"  capacity phase: feed and simulator stopped, {how}, worker node draining the backlog alone")
    t_worker_start = time.time()
    _start_worker(harness, sc, tag)
    samples, t_empty = _drain(sample, poll, timeout_s=sc.drain_timeout_s, check=check)
    return Drain(fill_s, t_worker_start, t_empty, samples, checkpoint=done)


def run_scenario(
    sc: Scenario, *, db_url: str, redis_url: str, workdir: Path, out: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run one scenario against a migrated, empty database; returns its report (series included), with the
    capacity phase's under "capacity" (None when skipped: no backlog asked, or the queue did not empty)."""
    prefix = f"bookfeed-bench-{uuid.uuid4().hex[:8]}:"  # this run's queues and stats, removed at the end
    port = free_port()
    tag = f"w{sc.workers}-s{sc.shards}-{uuid.uuid4().hex[:4]}"
    env = _env(dict(os.environ), db_url=db_url, redis_url=redis_url, prefix=prefix, workdir=workdir, sc=sc, port=port)
    harness = Harness(workdir / "logs" / tag, env, cwd=ROOT)
    rd = redis.Redis.from_url(redis_url)
    engine = create_engine(db_url, pool_size=2, isolation_level="AUTOCOMMIT")
    samples: list[Sample] = []
    poller = probes.BatchPoller()
    drain: Drain | None = None
    try:
        with engine.connect() as conn:
            _start_simulator(harness, sc, port)
            _start_worker(harness, sc, tag)
            harness.start("beat", beat_command(workdir / f"celerybeat-schedule-{tag}"))
            _start_feeds(harness, sc)
            cpu = probes.CpuMeter(_sources(harness, rd, conn))
            t_start = time.time()
            measure = (t_start + sc.warmup_s, t_start + sc.warmup_s + sc.duration_s)
            out(
                f"  {sc.label}: warm-up {sc.warmup_s:.0f} s, then {sc.duration_s:.0f} s measured (logs: {harness.logs})"
            )
            next_at = next_sample = time.monotonic()
            while time.time() < measure[1]:
                if time.monotonic() >= next_sample:
                    problem = harness.exited()
                    if problem:
                        raise RuntimeError(problem)
                    samples.append(_sample(port, rd, prefix, cpu))
                    next_sample += sc.sample_s
                poller.poll(conn)  # more often than the rest: the time a commit is seen bounds its latency
                next_at += _POLL_S
                time.sleep(max(0.0, next_at - time.monotonic()))
            t_stop = time.time()
            _stop_sources(harness, sc)
            drained, drained_at = _drain(
                lambda: _sample(port, rd, prefix, cpu),
                lambda: poller.poll(conn),
                timeout_s=sc.drain_timeout_s,
                check=lambda: None,
            )
            samples += drained
            sizes = storage_bytes(conn)
            if sc.backlog_s > 0 and drained_at is not None:
                drain = _capacity_phase(
                    sc,
                    harness,
                    tag=tag,
                    port=port,
                    sample=lambda: _sample(port, rd, prefix, cpu),
                    poll=lambda: poller.poll(conn),
                    out=out,
                    checkpoint=lambda: checkpoint(db_url),
                )
            elif sc.backlog_s > 0:
                out("  capacity phase skipped: the queue did not empty after the run")
            batches = poller.final(conn)
    finally:
        harness.stop_all()
        for key in rd.scan_iter(prefix + "*"):
            rd.delete(key)
        rd.close()
        engine.dispose()
    t_split = drain.t_worker_start if drain else float("inf")  # no batch commits while the node is stopped
    before = [b for b in batches if b.stored_at < t_split]
    report = summarise(sc, samples, before, sizes, t_start=t_start, t_stop=t_stop, drained_at=drained_at)
    after = [b for b in batches if b.stored_at >= t_split]
    report["capacity"] = None if drain is None else summarise_capacity(drain, after)
    return report


def _monotonic(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points in time order without repeats of a time (the same stats read twice)."""
    out: list[tuple[float, float]] = []
    for t, v in sorted(set(points)):
        if out and t == out[-1][0]:
            continue
        out.append((t, v))
    return out


def _cpu_seconds(first: Sample, last: Sample) -> dict[str, float]:
    """CPU seconds each component used between two samples; what the machine was busy with beyond them as OTHERS."""
    used = {name: last.cpu.get(name, 0.0) - first.cpu.get(name, 0.0) for name in last.cpu}
    if MACHINE in used:
        used[OTHERS] = used.pop(MACHINE) - sum(used.values())
    return used


def summarise_capacity(drain: Drain, batches: list[BatchRow]) -> dict[str, Any]:
    """The capacity phase's report from the batches committed after the worker node started again: the frames/s it
    stored from its first commit (transaction start) to its last (the headline: the whole drain, the pool's start and
    its last batches included; beat's averaging runs count too), the same over the middle 80 % of the backlog, and
    CPU per component over the drain (per stored frame: every frame of the backlog). The last commit's time is an
    upper bound: when the bench first saw it, or saw the queue empty, whichever came first (within _POLL_S)."""
    phase = sorted(batches, key=lambda b: b.stored_at)
    frames = sum(b.n_books for b in phase)
    t_first = phase[0].stored_at if phase else None
    seen = [b.seen_at for b in phase]
    last_seen = max(t for t in seen if t is not None) if phase and None not in seen else None
    end = min((t for t in (drain.t_empty, last_seen) if t is not None), default=None)
    cpu: dict[str, float] = {}
    cpu_us: dict[str, float] = {}
    if t_first is not None and end is not None and drain.samples:
        first = next((s for s in reversed(drain.samples) if s.t <= t_first), drain.samples[0])
        last = next((s for s in drain.samples if s.t >= end), drain.samples[-1])
        used = _cpu_seconds(first, last)
        span = last.t - first.t
        cpu = {name: 100.0 * v / span for name, v in used.items()} if span > 0 else {}
        cpu_us = {name: 1e6 * v / frames for name, v in used.items() if name != OTHERS and frames}
    return {
        "summary": {
            "backlog queued for s (feed running, worker node stopped)": drain.fill_s,
            "backlog frames stored": frames,
            "backlog batches": len(phase),
            "worker node start -> first commit s": None if t_first is None else t_first - drain.t_worker_start,
            "drain s (first commit -> last commit)": None if t_first is None or end is None else end - t_first,
            "queue empty by the end": "yes" if drain.t_empty is not None else "no (timed out)",
            "CHECKPOINT before the drain": {True: "yes", False: "no (not permitted)", None: "-"}[drain.checkpoint],
            CAPACITY: drain_rate(phase, end=end) if end is not None else 0.0,
            CAPACITY_MIDDLE: middle_rate(phase, share=0.8),
        },
        "cpu_percent_of_one_core": cpu,
        "cpu_us_per_frame": cpu_us,
        "cores per 10,000 frames/s (pipeline, from CPU per frame)": sum(
            us for name, us in cpu_us.items() if name not in _NOT_PIPELINE
        )
        / 100.0,
        "series": {
            "stored_by_commit_second": bucket_sum(
                ((b.stored_at, float(b.n_books)) for b in phase), origin=drain.t_worker_start
            ),
            "queue_tasks": [(s.t - drain.t_worker_start, float(s.pending_tasks)) for s in drain.samples],
        },
    }


def summarise(
    sc: Scenario,
    samples: list[Sample],
    batches: list[BatchRow],
    sizes: dict[str, Any],
    *,
    t_start: float,
    t_stop: float,
    drained_at: float | None,
) -> dict[str, Any]:
    """The report of one run from its samples and committed batches (times relative to t_start in the series)."""
    lo, hi = t_start + sc.warmup_s, t_start + sc.warmup_s + sc.duration_s
    offered = [(s.t, float(s.offered)) for s in samples if s.offered >= 0]
    # Feed counters: stamped by the feed itself; kept at their last value once a stopped feed's stats expire.
    received = _monotonic([(s.feed_t or s.t, float(s.received)) for s in samples if s.received])
    published, top = [], 0.0
    for s in samples:
        top = max(top, float(s.published))
        published.append(top)
    stored_in = sum(b.n_books for b in batches if lo <= b.stored_at < hi)
    received_in = rate_between(received, lo, hi) * sc.duration_s
    offered_rate = rate_between(offered, lo, hi)
    in_window = [b for b in batches if b.min_received_at is not None and lo <= b.min_received_at < hi]
    q = [0.5, 0.99, 1.0]
    tx = weighted_percentiles([(b.stored_at - b.min_received_at, b.n_books) for b in in_window if b.min_received_at], q)
    seen = weighted_percentiles(
        [(b.seen_at - b.min_received_at, b.n_books) for b in in_window if b.seen_at and b.min_received_at], q
    )
    cum_stored: list[tuple[float, float]] = []
    acc = 0
    order = sorted(batches, key=lambda b: b.stored_at)
    k = 0
    queue: list[tuple[float, float]] = []
    for s in samples:
        while k < len(order) and order[k].stored_at <= s.t:
            acc += order[k].n_books
            k += 1
        cum_stored.append((s.t, float(acc)))
        queue.append((s.t - t_start, max(0.0, published[len(queue)] - acc)))
    in_q = [v for t, v in queue if lo - t_start <= t <= hi - t_start]
    cpu_first = next((s for s in samples if s.t >= lo), samples[0])
    cpu_last = [s for s in samples if s.t <= hi][-1]
    span = cpu_last.t - cpu_first.t
    cpu = {name: 100.0 * used / span if span > 0 else 0.0 for name, used in _cpu_seconds(cpu_first, cpu_last).items()}
    stored_rate = stored_in / sc.duration_s
    committed_of_window = sum(b.n_books for b in in_window)
    # Per frame of what each component handles: the simulator offers, the feeds and Redis carry what is received.
    carried = {n: received_in / sc.duration_s for n in cpu if n.startswith(("feed", "redis"))}
    basis = {"simulator": offered_rate, **carried}
    cpu_us = {
        name: 1e4 * pct / rate
        for name, pct in cpu.items()
        if name != OTHERS and (rate := basis.get(name, stored_rate)) > 0
    }
    return {
        "label": sc.label,
        "scenario": {
            "symbols": sc.symbols,
            "speed": sc.speed,
            "workers": sc.workers,
            "shards": sc.shards,
            "warmup_s": sc.warmup_s,
            "duration_s": sc.duration_s,
            "batch_frames": sc.batch_frames,
            "backlog_s": sc.backlog_s,
        },
        "measure_window_s": [sc.warmup_s, sc.warmup_s + sc.duration_s],
        "summary": {
            "offered frames/s (nominal)": sc.nominal_offered,
            "offered frames/s (simulator)": offered_rate,
            "received frames/s (feed)": received_in / sc.duration_s,
            "stored frames/s (committed in window)": stored_rate,
            "stored / offered in window": stored_in / (offered_rate * sc.duration_s) if offered_rate else None,
            "queue frames at window start": in_q[0] if in_q else None,
            "queue frames at window end": in_q[-1] if in_q else None,
            "queue frames max in window": max(in_q) if in_q else None,
            "queue growth frames/s": (in_q[-1] - in_q[0]) / sc.duration_s if in_q else None,
            "drain s after stop": None if drained_at is None else drained_at - t_stop,
            # Latencies below cover the committed frames only; these had none by the end of the run.
            "frames received in window, not committed by the end": max(0, round(received_in - committed_of_window)),
            "latency p50 s (tx start)": tx[0],
            "latency p99 s (tx start)": tx[1],
            "latency max s (tx start)": tx[2],
            "latency p50 s (seen committed)": seen[0],
            "latency p99 s (seen committed)": seen[1],
            "latency max s (seen committed)": seen[2],
            "bytes/snapshot (every table, index, TOAST)": sizes["bytes_per_snapshot_all_tables"],
            "bytes/snapshot (book_snapshots incl. indexes, TOAST)": sizes["bytes_per_snapshot_book_snapshots"],
            "bytes/snapshot (book_snapshots heap only)": sizes["bytes_per_snapshot_heap_only"],
            "snapshots stored (whole run)": sizes["snapshots"],
        },
        "cpu_percent_of_one_core": cpu,
        "cpu_us_per_frame": cpu_us,
        # What this machine's cores would carry if the pipeline had them to itself: every component's CPU per frame.
        "cores per 10,000 frames/s (pipeline, from CPU per frame)": sum(
            us for name, us in cpu_us.items() if name not in _NOT_PIPELINE
        )
        / 100.0,
        "load_average_end": os.getloadavg(),
        "storage": sizes["tables"],
        "series": {
            "offered": [(t - t_start, v) for t, v in rates(offered)],
            "received": [(t - t_start, v) for t, v in rates(received)],
            "stored": [(t - t_start, v) for t, v in rates(cum_stored)],
            "stored_by_commit_second": bucket_sum(((b.stored_at, float(b.n_books)) for b in batches), origin=t_start),
            "queue_frames": queue,
            "queue_tasks": [(s.t - t_start, float(s.queued_tasks)) for s in samples],
            "latency": latency_series(batches, origin=t_start),
            "cpu_cumulative_s": [(s.t - t_start, s.cpu) for s in samples],
        },
    }
