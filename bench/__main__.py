"""`make bench` (`python -m bench`): the whole-market scenario (bench.whole_market) for each worker count and
feed-shard count asked, each followed by its capacity phase (the worker node alone draining a backlog the feed queued
while it was stopped), then in the same run the bare COPY limit (bench.copy_limit: the median of rounds, with their
range) and the naive design (bench.naive), with the ratios: against the COPY median, and the capacity's also over the
rounds' range. The stored rate in the measured window can never pass the offered load (15,000 frames/s for 1,500
symbols at 100 ms), so its ratios are capped by it; the capacity ratios are not. Writes JSON and a PNG. Figures,
never CI gates.

Uses DATABASE_URL / REDIS_URL when set (a database of its own, dropped at the end, and a key prefix of its own in
Redis database 13: never a flush), embedded servers otherwise. The per-component benches stay runnable alone:
`python -m bench.bench_core`, `python -m bench.bench_simulator`, `python -m bench.bench_pipeline`."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench._common import services
from bench.copy_limit import copy_limit, stored_rows
from bench.naive import run_naive
from bench.report import (
    format_copy_limit,
    format_ratio_range,
    format_summary,
    parse_list,
    plot,
    ratio_range,
    ratios,
    write_json,
)
from bench.whole_market import CAPACITY, CAPACITY_MIDDLE, Scenario, run_scenario

__all__ = ["build_parser", "main", "scenarios"]

_DESCRIPTION = (
    "The whole-market scenario (simulator, feed, Redis, PostgreSQL, workers on this machine) per worker and shard "
    "count, each with its capacity phase (the worker node stopped while the feed queues --backlog-seconds of frames, "
    "then timed draining them with feed and simulator stopped), then the bare COPY limit and the naive design, with "
    "the ratios: in the measured window (capped by the offered load) and of the capacity; JSON and PNG in --out."
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=_DESCRIPTION)
    p.add_argument("--duration", type=float, default=60.0, help="seconds measured after warm-up (default 60)")
    p.add_argument("--warmup", type=float, default=20.0, help="seconds before measuring (default 20)")
    p.add_argument("--symbols", type=int, default=1500, help="symbols the simulator makes up (default 1500)")
    p.add_argument("--speed", choices=("100ms", "1000ms"), default="100ms")
    p.add_argument("--workers", type=parse_list, default=(2,), help="worker processes, a list: 1,2,4 (default 2)")
    p.add_argument("--shards", type=parse_list, default=(1,), help="feed processes (--shard i/n), a list (default 1)")
    p.add_argument("--batch-frames", type=int, help="BOOKFEED_BATCH_MAX_FRAMES for the feeds (default: the setting's)")
    p.add_argument("--drain-timeout", type=float, default=300.0, help="longest wait for the queue to empty")
    p.add_argument(
        "--backlog-seconds",
        type=float,
        default=60.0,
        help="capacity phase: seconds the feed runs with the worker node stopped (default 60: about 880,000 frames "
        "queued for 1,500 symbols at 100 ms, a drain long enough that beat's averaging runs weigh their share and the "
        "pool's first second little; 0: skip the phase)",
    )
    p.add_argument(
        "--copy-seconds",
        type=float,
        default=8.0,
        help="seconds of bare COPY per chunk size, split between the rounds, after a 1 s warm-up (0: skip)",
    )
    p.add_argument("--copy-rounds", type=int, default=3, help="bare COPY rounds, each after a CHECKPOINT (default 3)")
    p.add_argument("--naive-tasks", type=int, default=20_000, help="tasks queued for the naive design (0: skip)")
    p.add_argument("--naive-seconds", type=float, default=20.0, help="longest naive measurement")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for whole-market.json/.png")
    p.add_argument(
        "--quick", action="store_true", help="a short smoke run: 150 symbols, 8 s warm-up, 10 s, a 5 s backlog"
    )
    return p


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    """One scenario per (workers, shards) pair asked, in that order."""
    if args.quick:
        args.symbols, args.warmup, args.duration = min(args.symbols, 150), 8.0, 10.0
        args.copy_seconds, args.naive_tasks, args.naive_seconds = min(args.copy_seconds, 2.0), 2_000, 8.0
        args.backlog_seconds = min(args.backlog_seconds, 5.0)
    return [
        Scenario(
            symbols=args.symbols,
            speed=args.speed,
            workers=w,
            shards=s,
            warmup_s=args.warmup,
            duration_s=args.duration,
            drain_timeout_s=args.drain_timeout,
            batch_frames=args.batch_frames,
            backlog_s=args.backlog_seconds,
        )
        for s in args.shards
        for w in args.workers
    ]


def _format_capacity(capacity: dict[str, Any]) -> str:
    rate = capacity["summary"][CAPACITY]
    return "\n".join(
        [
            f"  capacity: stored frames/s draining a backlog (feed and simulator stopped): {rate:,.0f}",
            "    (the headline counts the whole drain, from the first commit to the last; the middle 80 % of the "
            "backlog leaves out the pool's first and last batches)",
            format_summary(capacity["summary"], indent="    "),
            "    CPU, % of one core, over the drain:",
            format_summary(capacity["cpu_percent_of_one_core"], indent="      "),
            "    CPU µs per stored frame, over the drain:",
            format_summary(capacity["cpu_us_per_frame"], indent="      "),
            "    cores per 10,000 frames/s (the CPU above, per frame): "
            f"{capacity['cores per 10,000 frames/s (pipeline, from CPU per frame)']:.2f}",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    runs = scenarios(args)
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bookfeed-bench-{uuid.uuid4().hex[:6]}"
    doc: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_at_start": os.getloadavg()},
        "command": "python -m bench " + " ".join(argv or sys.argv[1:]),
        "runs": [],
    }
    print(f"whole-market bench: {len(runs)} run(s); load average at start {os.getloadavg()[0]:.2f}", flush=True)
    with services() as (_, redis_base, new_database):
        redis_url = f"{redis_base}/13"
        copy_db = None
        for sc in runs:
            db_url = new_database()
            report = run_scenario(sc, db_url=db_url, redis_url=redis_url, workdir=workdir)
            doc["runs"].append(report)
            print(f"\n== {report['label']}\n{format_summary(report['summary'])}", flush=True)
            print("  CPU, % of one core:\n" + format_summary(report["cpu_percent_of_one_core"], indent="    "))
            print(
                "  CPU µs per frame (simulator: offered; feed, redis: received; the rest: stored):\n"
                + format_summary(report["cpu_us_per_frame"], indent="    ")
            )
            cores = report["cores per 10,000 frames/s (pipeline, from CPU per frame)"]
            print(f"  cores per 10,000 frames/s end to end (the CPU above, per frame): {cores:.2f}", flush=True)
            if report["capacity"]:
                print(_format_capacity(report["capacity"]), flush=True)
            copy_db = copy_db or db_url
        if copy_db and args.copy_seconds > 0:
            rows = stored_rows(copy_db, 100_000)
            doc["copy_limit"] = {
                str(chunk): copy_limit(
                    copy_db, rows, chunk=chunk, duration_s=args.copy_seconds, rounds=args.copy_rounds
                )
                for chunk in (200, 5_000)
            }
            print(
                "\n== bare COPY into a scratch table of book_snapshots' shape, one process, one commit per chunk "
                "(a discarded warm-up round, then the median and range of rounds, each started after a CHECKPOINT)"
            )
            for chunk, r in doc["copy_limit"].items():
                print(format_copy_limit(chunk, r))
        doc["naive"] = {}
        if args.naive_tasks > 0:
            naive_db = new_database()
            for w in sorted({sc.workers for sc in runs}):
                r = run_naive(
                    db_url=naive_db,
                    redis_url=redis_url,
                    prefix=f"bookfeed-bench-naive-{uuid.uuid4().hex[:8]}:",
                    concurrency=w,
                    tasks=args.naive_tasks,
                    duration_s=args.naive_seconds,
                    logs=workdir / "logs" / f"naive-w{w}",
                )
                doc["naive"][str(w)] = r
                print(f"\n== naive design, {w} worker process(es): {r['rows_per_s']:,.0f} rows/s", flush=True)
    copy_200 = doc.get("copy_limit", {}).get("200", {})
    copy_rate = copy_200.get("rows_per_s", 0.0)
    print(
        "\n== ratios. in window: stored frames/s in the measured window, capped by the offered load (it cannot pass "
        "offered / limit). capacity: stored frames/s draining a backlog, feed and simulator stopped"
    )
    for report in doc["runs"]:
        summary, capacity = report["summary"], (report["capacity"] or {}).get("summary", {})
        report["ratios"] = ratios(
            stored_in_window=summary["stored frames/s (committed in window)"],
            offered=summary["offered frames/s (simulator)"],
            capacity=capacity.get(CAPACITY),
            capacity_middle=capacity.get(CAPACITY_MIDDLE),
            naive=doc["naive"].get(str(report["scenario"]["workers"]), {}).get("rows_per_s", 0.0),
            bare_copy=copy_rate,
        )
        report["capacity_vs_bare_copy_range"] = ratio_range(
            capacity.get(CAPACITY), copy_200.get("rows_per_s_min", 0.0), copy_200.get("rows_per_s_max", 0.0)
        )
        print(f"  {report['label']}:\n" + format_summary(report["ratios"], indent="    "))
        print(
            format_ratio_range(
                "capacity vs bare COPY (200-row chunks), over the COPY rounds' range (/ fastest .. / slowest)",
                report["capacity_vs_bare_copy_range"],
            )
        )
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "whole-market.json", doc)
    plot(args.out / "whole-market.png", doc["runs"])
    print(f"\nwrote {args.out / 'whole-market.json'} and {args.out / 'whole-market.png'}")
    print("(this machine has 2 cores shared with other work: absolute figures are pessimistic)")


if __name__ == "__main__":
    main()
