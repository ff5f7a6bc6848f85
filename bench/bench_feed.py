"""The feed process alone at the whole-market load: CPU microseconds per received frame.

The simulator serves N made-up symbols at depth20@100ms; `bookfeed feed --symbols all` reads them all and publishes to
Redis under a key prefix of its own, whose outbox and queue this bench empties as it goes (no workers). After the
feed has subscribed every stream and a warm-up, it samples the feed's CPU seconds (/proc) at two of its stats
snapshots (frames + duplicates received, written by the feed once a second) `--duration` seconds apart.
Repeated `--repeat` times (a new feed each time, the same simulator); prints each run, then min and median. With
`--profile FILE` one more run is recorded by py-spy (`pip install py-spy`, not a project dependency).

    .venv/bin/python -m bench.bench_feed --symbols 1500 --duration 60 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis

from models.outbox import OutboxKeys
from stack.harness import ROOT, Harness, bookfeed_command, feed_command, free_port, log_line

__all__ = ["main"]


def _cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def _cpu_s(pid: int) -> float:
    return sum(_cpu_times(pid))


def _stats(rd: redis.Redis, prefix: str) -> dict[str, Any] | None:
    keys = list(rd.scan_iter(prefix + "bookfeed:feed:stats:*"))
    raw = rd.get(keys[0]) if keys else None
    return orjson.loads(raw) if raw else None


def _fresh_stats(
    rd: redis.Redis, prefix: str, after: float, pids: tuple[int, int]
) -> tuple[dict[str, Any], tuple[float, float], float]:
    """The first stats snapshot newer than `after`, the feed's (user, system) CPU seconds read as soon as it was
    seen, and the simulator's CPU seconds."""
    while True:
        s = _stats(rd, prefix)
        if s is not None and s["ts"] > after:
            return s, _cpu_times(pids[0]), _cpu_s(pids[1])
        time.sleep(0.01)


def _drain(rd: redis.Redis, keys: list[str], stop: threading.Event) -> None:
    """Empty the outbox and queue every half second: nobody consumes them."""
    while not stop.wait(0.5):
        rd.unlink(*keys)


def _run_once(
    harness: Harness, rd: redis.Redis, args: argparse.Namespace, n: int, profile: Path | None
) -> dict[str, float]:
    prefix = f"bookfeed-benchfeed-{uuid.uuid4().hex[:8]}:"
    keys = OutboxKeys(prefix)
    stop = threading.Event()
    drainer = threading.Thread(target=_drain, args=(rd, [*keys.enqueue_keys(), keys.delivered], stop), daemon=True)
    drainer.start()
    extra = {"BOOKFEED_BROKER_KEY_PREFIX": prefix, "BOOKFEED_METRICS_PORT": str(free_port())}
    if args.ledger:
        extra["BOOKFEED_LEDGER_PATH"] = str(harness.logs / f"ledger-{n}.tsv")
    name = f"feed-{n}"
    child = harness.start(name, feed_command(), extra_env=extra)
    pid = child.popen.pid
    spy = None
    try:
        deadline = time.monotonic() + 120
        while True:  # every stream subscribed and every connection live
            if harness.exited():
                raise RuntimeError(harness.exited())
            s = _stats(rd, prefix)
            if s and s["streams_subscribed"] >= args.symbols and all(c["state"] == "live" for c in s["connections"]):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"feed not subscribed in 120 s: {s and s['streams_subscribed']}")
            time.sleep(0.5)
        time.sleep(args.warmup)
        if profile is not None:
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "-p",
                    str(pid),
                    "-d",
                    str(int(args.duration)),
                    "-r",
                    "100",
                    "-f",
                    "raw" if profile.suffix == ".txt" else "flamegraph",
                    "-o",
                    str(profile),
                    "--nonblocking",
                    "--threads",
                    "--gil",
                ],
                stdout=subprocess.DEVNULL,
            )
        pids = (pid, harness.children["simulator"].popen.pid)
        a, cpu_a, sim_a = _fresh_stats(rd, prefix, time.time(), pids)
        time.sleep(args.duration)
        b, cpu_b, sim_b = _fresh_stats(rd, prefix, time.time(), pids)
        if spy is not None:
            spy.wait(60)
        frames = (b["frames"] + b["duplicates"]) - (a["frames"] + a["duplicates"])
        dt = b["ts"] - a["ts"]
        user, system = cpu_b[0] - cpu_a[0], cpu_b[1] - cpu_a[1]
        cpu = user + system
        return {
            "frames_per_s": frames / dt,
            "cpu_percent": 100 * cpu / dt,
            "us_per_frame": 1e6 * cpu / frames if frames else float("nan"),
            "system_share": system / cpu if cpu else 0.0,
            "simulator_percent": 100 * (sim_b - sim_a) / dt,
            "reconnects": float(b["reconnects"] - a["reconnects"]),
            "dropped": float(b["dropped_frames"]),
            "buffered": float(b["buffered_frames"]),
        }
    finally:
        harness.stop(name, timeout=60)
        stop.set()
        drainer.join()
        for key in rd.scan_iter(prefix + "*"):
            rd.unlink(key)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_feed", description=__doc__.split("\n\n")[0])
    p.add_argument("--symbols", type=int, default=1500)
    p.add_argument("--duration", type=float, default=60.0, help="seconds measured per run (default 60)")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds after every stream is live (default 10)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ledger", action="store_true", help="with the audit ledger on (BOOKFEED_LEDGER_PATH)")
    p.add_argument("--profile", type=Path, help="one more run under py-spy: .svg flame graph or .txt collapsed stacks")
    args = p.parse_args(argv)
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKFEED_")}
    env.update(
        REDIS_URL=redis_url,
        BOOKFEED_LOG_FORMAT="text",
        BOOKFEED_SYMBOLS="all",
        BOOKFEED_DEPTH="20",
        BOOKFEED_SPEED="100ms",
        BOOKFEED_URL=f"ws://127.0.0.1:{port}",
        BOOKFEED_REST_URL=f"http://127.0.0.1:{port}",
        PYTHONUNBUFFERED="1",
    )
    rd = redis.Redis.from_url(redis_url)
    with tempfile.TemporaryDirectory(prefix="bench-feed-") as work:
        harness = Harness(Path(work), env, cwd=ROOT)
        try:
            harness.start(
                "simulator",
                bookfeed_command(
                    "simulate",
                    "--port",
                    str(port),
                    "--random-symbols",
                    str(args.symbols),
                    "--not-trading",
                    "0",
                    "--seed",
                    "1",
                    "--max-connections-per-5m",
                    "0",
                ),
                ready=log_line("listening on"),
            )
            runs = []
            for n in range(args.repeat):
                r = _run_once(harness, rd, args, n, None)
                runs.append(r)
                print(
                    f"run {n + 1}: {r['frames_per_s']:,.0f} frames/s, feed CPU {r['cpu_percent']:.1f} % of a core, "
                    f"{r['us_per_frame']:.2f} us/frame ({100 * r['system_share']:.0f} % system; simulator "
                    f"{r['simulator_percent']:.0f} %; reconnects {r['reconnects']:.0f}, dropped {r['dropped']:.0f})",
                    flush=True,
                )
            if runs:
                us = [r["us_per_frame"] for r in runs]
                print(f"us/frame: min {min(us):.2f}, median {statistics.median(us):.2f} over {len(us)} runs")
            if args.profile is not None:
                _run_once(harness, rd, args, args.repeat, args.profile.resolve())
                print(f"profile: {args.profile}")
        finally:
            harness.stop_all()
            rd.close()


if __name__ == "__main__":
    main()
