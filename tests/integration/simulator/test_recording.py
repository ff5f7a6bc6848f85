"""Record from the simulator, replay the file: same bytes, same order, original or faster pace."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from simulator import ReplayConfig, ReplayThread, read_recording, record

pytestmark = pytest.mark.integration

STREAMS = ["btcusdt@depth20@100ms", "ethusdt@depth5@100ms"]


@pytest.fixture
def recording(sim, tmp_path: Path) -> Path:
    path = tmp_path / "rec.jsonl.gz"
    assert record(sim.url(STREAMS), path, max_frames=30) == 30
    return path


def test_record_stores_raw_text_and_receive_times(recording: Path) -> None:
    rec = read_recording(recording)
    assert len(rec.frames) == 30 and rec.url is not None and rec.url.endswith("/stream?streams=" + "/".join(STREAMS))
    times = [f.t_ns for f in rec.frames]
    assert times == sorted(times) and abs(times[0] / 1e9 - time.time()) < 60
    assert all(f.frame.startswith('{"stream":"') for f in rec.frames)


def test_fast_replay_is_byte_identical(recording: Path, connect) -> None:
    recorded = [f.frame for f in read_recording(recording).frames]
    with ReplayThread(ReplayConfig(recording, fast=True)) as replay:
        client = connect(replay.url(STREAMS))
        assert [client.recv() for _ in recorded] == recorded
        only_eth = connect(replay.url([STREAMS[1]]))
        assert [t for _, t in only_eth.frames(0.3)] == [f for f in recorded if STREAMS[1] in f]
        raw = connect(replay.url([STREAMS[0]], combined=False))
        expected = [orjson.loads(f)["data"] for f in recorded if STREAMS[0] in f]
        got = [orjson.loads(t) for _, t in raw.frames(0.3)]
        assert got == expected
        assert replay.stats()["frames"][STREAMS[0]] == 2 * len(expected)


def test_replay_keeps_pace_and_speed(recording: Path, connect) -> None:
    frames = read_recording(recording).frames
    span = (frames[-1].t_ns - frames[0].t_ns) / 1e9
    with ReplayThread(ReplayConfig(recording, speed=2.0)) as replay:
        client = connect(replay.url(STREAMS))
        start = time.monotonic()
        for _ in frames:
            client.recv()
        elapsed = time.monotonic() - start
    assert span / 2 - 0.15 < elapsed < span / 2 + 0.4
