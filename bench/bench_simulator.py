"""Frames per second the simulator delivers to 1 and to N websocket-client readers (never a CI gate).

The server and every client run in their own process, so they do not share a GIL. Usage:

    .venv/bin/python bench/bench_simulator.py [--duration 5] [--clients 1,10] [--rate R] [--streams ...]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
from multiprocessing.queues import Queue
from typing import Any

import websocket

from simulator import ServerConfig, SimConfig, build_simulator, count_frames, serve_until_signal, ws_url

_STREAMS = ("btcusdt@depth20@100ms", "ethusdt@depth20@100ms", "bnbusdt@depth20@100ms")


def _server(rate: float, ports: Queue[Any]) -> None:
    config = SimConfig(rate=rate, server=ServerConfig(port=0, ping_interval_s=None, max_lifetime_s=None))
    serve_until_signal(build_simulator(config), on_ready=ports.put)


def _client(url: str, warmup_s: float, duration_s: float, results: Queue[Any]) -> None:
    ws = websocket.create_connection(url, skip_utf8_validation=True, timeout=10)
    try:
        results.put(count_frames(ws, warmup_s=warmup_s, duration_s=duration_s))
    finally:
        ws.close()


def run(clients: int, *, rate: float, streams: tuple[str, ...], duration_s: float) -> dict[str, float]:
    """Start a server and ``clients`` readers; return total and per-client frames/s and MB/s."""
    ctx = mp.get_context("spawn")
    ports: Queue[Any] = ctx.Queue()
    results: Queue[Any] = ctx.Queue()
    server = ctx.Process(target=_server, args=(rate, ports), daemon=True)
    server.start()
    try:
        url = ws_url("127.0.0.1", ports.get(timeout=30), streams)
        readers = [ctx.Process(target=_client, args=(url, 1.0, duration_s, results)) for _ in range(clients)]
        for reader in readers:
            reader.start()
        measured = [results.get(timeout=duration_s + 60) for _ in readers]
        for reader in readers:
            reader.join(timeout=10)
    finally:
        if server.pid is not None:
            os.kill(server.pid, signal.SIGTERM)
        server.join(timeout=10)
    total = sum(frames / seconds for frames, _, seconds in measured)
    mbytes = sum(size / seconds for _, size, seconds in measured) / 1e6
    return {"clients": clients, "total": total, "per_client": total / clients, "mb_s": mbytes}


def format_table(rows: list[dict[str, float]]) -> str:
    """Render the results as a small fixed-width table."""
    lines = [f"{'clients':>7} {'frames/s total':>15} {'frames/s/client':>16} {'MB/s':>8}"]
    for row in rows:
        lines.append(f"{row['clients']:>7.0f} {row['total']:>15,.0f} {row['per_client']:>16,.0f} {row['mb_s']:>8.1f}")
    return "\n".join(lines)


def main() -> None:
    """Parse flags, run each client count, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (after 1 s warm-up)")
    parser.add_argument("--clients", default="1,10", help="comma-separated client counts")
    parser.add_argument("--rate", type=float, default=1e9, help="frames/s per connection (default: unlimited)")
    parser.add_argument("--streams", default=",".join(_STREAMS), help="comma-separated stream names")
    args = parser.parse_args()
    streams = tuple(args.streams.split(","))
    rows = [run(int(n), rate=args.rate, streams=streams, duration_s=args.duration) for n in args.clients.split(",")]
    print(f"simulator -> websocket-client, {len(streams)} depth streams, rate {args.rate:g}/s per connection")
    print(format_table(rows))


if __name__ == "__main__":
    main()
