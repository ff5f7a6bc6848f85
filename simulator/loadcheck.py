"""Load check: frames/s the simulator delivers over several subscribed connections, and the CPU it uses doing so.

Never a test (timings belong to benchmarks). The simulator and each client connection run in their own process;
clients subscribe by SUBSCRIBE messages (within 5 messages/s) on bare ``/stream`` connections, as the feed does.
CPU comes from ``/proc/<pid>/stat`` (Linux). Usage (its own simulator, or one already running, e.g.
``bookfeed simulate --random-symbols 1500``, whose TRADING symbols it reads from exchangeInfo)::

    .venv/bin/python -m simulator.loadcheck --symbols 1500 --speed 100ms --connections 3 --duration 10
    .venv/bin/python -m simulator.loadcheck --port 9443 --pid <simulator pid> --speed 100ms --connections 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import time
import urllib.request
from multiprocessing.queues import Queue
from typing import Any

import orjson
import websocket

from simulator.probe import count_frames
from simulator.runtime import SimConfig, build_simulator, serve_until_signal
from simulator.session import ServerConfig

_CHUNK = 200  # streams per SUBSCRIBE message


def _server(symbols: int, ports: Queue[Any]) -> None:
    server = ServerConfig(port=0, max_lifetime_s=None, max_connections_per_5m=None)
    config = SimConfig(random_symbols=symbols, seed=1, server=server)
    serve_until_signal(build_simulator(config), on_ready=ports.put)


def _client(url: str, streams: list[str], warmup_s: float, duration_s: float, results: Queue[Any]) -> None:
    ws = websocket.create_connection(url, skip_utf8_validation=True, timeout=10)
    try:
        for i in range(0, len(streams), _CHUNK):
            ws.send(orjson.dumps({"method": "SUBSCRIBE", "params": streams[i : i + _CHUNK], "id": i}).decode())
            time.sleep(0.25)  # Binance (and the simulator) allow 5 incoming messages per second
        results.put(count_frames(ws, warmup_s=warmup_s, duration_s=duration_s))
    finally:
        ws.close()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _trading_symbols(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v3/exchangeInfo", timeout=10) as response:
        doc = orjson.loads(response.read())
    return [entry["symbol"] for entry in doc["symbols"] if entry["status"] == "TRADING"]


def _measure(
    port: int, pid: int | None, symbols: list[str], *, speed: str, connections: int, depth: int, duration_s: float
) -> tuple[list[tuple[int, int, float]], float | None]:
    """Clients' (frames, bytes, seconds) and the server's CPU share (None without ``pid``)."""
    ctx = mp.get_context("spawn")
    results: Queue[Any] = ctx.Queue()
    warmup_s = 3.0 + 0.25 * (len(symbols) / connections / _CHUNK + 1)
    suffix = "@100ms" if speed == "100ms" else ""
    names = [f"{s.lower()}@depth{depth}{suffix}" for s in symbols]
    url = f"ws://127.0.0.1:{port}/stream"
    shares = [names[i::connections] for i in range(connections)]
    readers = [ctx.Process(target=_client, args=(url, share, warmup_s, duration_s, results)) for share in shares]
    for reader in readers:
        reader.start()
    time.sleep(warmup_s + 1.0)  # clients subscribe, then warm up
    cpu0, t0 = _cpu_s(pid) if pid else 0.0, time.monotonic()
    measured = [results.get(timeout=duration_s + 120) for _ in readers]
    cpu1, t1 = _cpu_s(pid) if pid else 0.0, time.monotonic()
    for reader in readers:
        reader.join(timeout=10)
    return measured, (cpu1 - cpu0) / (t1 - t0) if pid else None


def run(
    *, symbols: int, speed: str, connections: int, depth: int, duration_s: float, port: int = 0, pid: int = 0
) -> dict[str, Any]:
    """Subscribe every TRADING symbol over ``connections`` connections and measure: of the simulator on ``port``
    (CPU of process ``pid`` if given), or of a new one serving ``symbols`` random symbols when ``port`` is 0."""
    server = None
    if port == 0:
        ctx = mp.get_context("spawn")
        ports: Queue[Any] = ctx.Queue()
        server = ctx.Process(target=_server, args=(symbols, ports), daemon=True)
        server.start()
        pid = server.pid or 0
    try:
        if server is not None:
            port = ports.get(timeout=60)
        names = _trading_symbols(port)
        if len(names) > 1024 * connections:
            raise SystemExit(f"{len(names)} streams need more than {connections} connections of at most 1024")
        measured, cpu = _measure(
            port, pid or None, names, speed=speed, connections=connections, depth=depth, duration_s=duration_s
        )
    finally:
        if server is not None and server.pid is not None:
            os.kill(server.pid, signal.SIGTERM)
            server.join(timeout=10)
    per_connection = [frames / seconds for frames, _, seconds in measured]
    symbols = len(names)
    return {
        "symbols": symbols,
        "speed": speed,
        "connections": connections,
        "offered_frames_s": symbols * (10 if speed == "100ms" else 1),
        "received_frames_s": round(sum(per_connection)),
        "per_connection_frames_s": [round(v) for v in per_connection],
        "mb_s": round(sum(size / seconds for _, size, seconds in measured) / 1e6, 1),
        "simulator_cpu_percent": None if cpu is None else round(100 * cpu, 1),
    }


def main() -> None:
    """Parse the flags, run once, print one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m simulator.loadcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--symbols", type=int, default=1500)
    parser.add_argument("--speed", choices=("1000ms", "100ms"), default="1000ms")
    parser.add_argument("--connections", type=int, default=3)
    parser.add_argument("--depth", type=int, choices=(5, 10, 20), default=20)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=0, help="a running simulator's port (0: start one)")
    parser.add_argument("--pid", type=int, default=0, help="with --port: the simulator's pid, for its CPU")
    args = parser.parse_args()
    result = run(
        symbols=args.symbols,
        speed=args.speed,
        connections=args.connections,
        depth=args.depth,
        duration_s=args.duration,
        port=args.port,
        pid=args.pid,
    )
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
