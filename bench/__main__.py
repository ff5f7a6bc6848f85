"""`make bench`: every benchmark in one run, with the command that reproduces each figure. Figures, never CI gates.

Uses DATABASE_URL / REDIS_URL when set, embedded servers otherwise (each bench makes and drops its own database).
"""

from __future__ import annotations

from bench import bench_core, bench_pipeline, bench_simulator


def main() -> None:
    print("== simulator -> websocket-client (python -m bench.bench_simulator)", flush=True)
    streams = ("btcusdt@depth20@100ms", "ethusdt@depth20@100ms", "bnbusdt@depth20@100ms")
    rows = [bench_simulator.run(n, rate=1e9, streams=streams, duration_s=5.0) for n in (1, 10)]
    print(bench_simulator.format_table(rows), flush=True)

    print("\n== parse, metrics, COPY, bytes per snapshot (python -m bench.bench_core)", flush=True)
    for k, v in bench_core.run().items():
        print(f"  {k:<40} {v:>12,.0f}", flush=True)

    print("\n== end to end through `bookfeed up`, 30 s per rate (python -m bench.bench_pipeline 3000 8000)", flush=True)
    for row in bench_pipeline.run((3000, 8000), duration_s=30.0):
        print("  " + "  ".join(f"{k}={v:,.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
