"""What the whole-market bench samples once a second: CPU per component (psutil, per process tree), the
simulator's and feeds' counters, the broker's queue, and the batches committed in PostgreSQL."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import orjson
import psutil  # type: ignore[import-untyped]  # no stubs installed (types-psutil)
import redis
from sqlalchemy import Connection, text

from bench.report import BatchRow
from feed.service import read_feed_stats
from models.vocabulary import INGEST_QUEUE
from stack.harness import pending_tasks

__all__ = [
    "MACHINE",
    "BatchPoller",
    "CpuMeter",
    "feed_frames",
    "machine_busy_s",
    "postgres_pids",
    "queue_depth",
    "redis_pid",
    "simulator_offered",
]

PidSource = Callable[[], Iterable[int]]
MACHINE = "machine (all processes)"  # busy CPU seconds of the whole machine, for what others use meanwhile


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O) since boot."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (a Celery node and its pool processes)."""
    try:
        proc = psutil.Process(pid)
        return [pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.Error:
        return []


@dataclass
class CpuMeter:
    """CPU seconds per component since the meter started, from the processes each component's source names at
    each `sample()`. A process first seen mid-run counts from that moment; one that exited keeps what was seen."""

    sources: Mapping[str, PidSource]
    _procs: dict[int, psutil.Process] = field(default_factory=dict)
    _last: dict[int, float] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)

    def sample(self) -> dict[str, float]:
        """Cumulative CPU seconds per component."""
        for name, source in self.sources.items():
            used = 0.0
            try:
                pids = list(source())
            except Exception:  # a source that cannot answer this second (a server restarting): skip it
                pids = []
            for pid in pids:
                cpu = self._cpu(pid)
                if cpu is None:
                    continue
                prev = self._last.get(pid)
                self._last[pid] = cpu
                if prev is not None and cpu >= prev:
                    used += cpu - prev
            self.totals[name] = self.totals.get(name, 0.0) + used
        out = dict(self.totals)
        out[MACHINE] = machine_busy_s()
        return out

    def _cpu(self, pid: int) -> float | None:
        proc = self._procs.get(pid)
        try:
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
            t = proc.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            self._procs.pop(pid, None)
            return None


def redis_pid(client: redis.Redis) -> int:
    """The Redis server's process id (INFO server): the embedded one's or the shared one's."""
    return int(client.info("server")["process_id"])


def postgres_pids(conn: Connection, *, ours: bool) -> list[int]:
    """Backends serving this database (`ours`), or the cluster's background processes (checkpointer, WAL writer,
    autovacuum...), which every database on the cluster shares."""
    if ours:
        sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    else:
        sql = "SELECT pid FROM pg_stat_activity WHERE datname IS NULL"
    return [int(r[0]) for r in conn.execute(text(sql))]


def simulator_offered(port: int) -> int:
    """Frames the simulator sent plus those it skipped for slow clients (GET /control/stats)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/control/stats", timeout=2) as response:
        doc = orjson.loads(response.read())
    return int(doc["frames_total"]) + int(doc["frames_skipped"])


def feed_frames(client: redis.Redis, prefix: str) -> tuple[int, int, float | None]:
    """(frames received, frames published, when) summed over every feed's latest stats in Redis; `when` is the
    newest of the feeds' own stamps (None without stats), so a late stats write does not look like a burst."""
    stats = read_feed_stats(client, prefix)
    when = max((float(s["ts"]) for s in stats if "ts" in s), default=None)
    return sum(int(s.get("frames", 0)) for s in stats), sum(int(s.get("published_frames", 0)) for s in stats), when


def queue_depth(client: redis.Redis, prefix: str) -> tuple[int, int]:
    """(tasks queued on the ingest queue, tasks pending anywhere: queued, reserved or in the outbox)."""
    return int(client.llen(prefix + INGEST_QUEUE)), pending_tasks(client, prefix)


_NEW_BATCHES = text(
    "SELECT batch_id, extract(epoch FROM stored_at), extract(epoch FROM min_received_at), "
    "extract(epoch FROM max_received_at), n_books FROM ingest_batches WHERE stored_at > to_timestamp(:since)"
)


@dataclass
class BatchPoller:
    """Reads the batches committed since the last poll and stamps each with the time it was first seen (an upper
    bound of its commit time; stored_at, the transaction's start, is the lower bound). Rows whose transaction
    started `overlap_s` before the newest seen are read again, so a long transaction committing late is seen."""

    overlap_s: float = 15.0
    rows: dict[str, BatchRow] = field(default_factory=dict)
    _newest: float = 0.0

    def poll(self, conn: Connection) -> None:
        now = time.time()
        for batch_id, stored, lo, hi, n in conn.execute(_NEW_BATCHES, {"since": self._newest - self.overlap_s}):
            if batch_id in self.rows:
                continue
            row = BatchRow(str(batch_id), float(stored), _f(lo), _f(hi), int(n), seen_at=now)
            self.rows[row.batch_id] = row
            self._newest = max(self._newest, row.stored_at)

    def final(self, conn: Connection) -> list[BatchRow]:
        """Every batch in the table, with the seen time of those seen while polling."""
        seen = self.rows
        out = []
        for batch_id, stored, lo, hi, n in conn.execute(_NEW_BATCHES, {"since": 0.0}):
            row = seen.get(str(batch_id)) or BatchRow(str(batch_id), float(stored), _f(lo), _f(hi), int(n))
            out.append(row)
        return sorted(out, key=lambda r: r.stored_at)


def _f(v: object) -> float | None:
    return None if v is None else float(v)  # type: ignore[arg-type]
