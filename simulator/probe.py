"""The client side of the load measurements (simulator.loadcheck, bench/bench_simulator.py): read a connection for a
while and count what arrived."""

from __future__ import annotations

import time

import websocket

__all__ = ["count_frames"]


def count_frames(ws: websocket.WebSocket, *, warmup_s: float, duration_s: float) -> tuple[int, int, float]:
    """Read `ws` for `warmup_s` seconds without counting, then for `duration_s` seconds: (frames, bytes, seconds)."""
    end_warmup = time.monotonic() + warmup_s
    while time.monotonic() < end_warmup:
        ws.recv()
    frames = size = 0
    start = time.monotonic()
    deadline = start + duration_s
    while True:
        size += len(ws.recv())
        frames += 1
        if frames % 128 == 0 and time.monotonic() >= deadline:
            break
    return frames, size, time.monotonic() - start
