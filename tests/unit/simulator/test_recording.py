"""Recording file format and how recorded frames are turned into replayable ones."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from models.errors import ConfigError
from simulator import (
    RecordedFrame,
    RecordingError,
    RecordingWriter,
    ReplayConfig,
    build_replayer,
    read_recording,
    replay_items,
)

pytestmark = pytest.mark.unit

COMBINED = '{"stream":"btcusdt@depth5@100ms","data":{"lastUpdateId":1,"bids":[["1.00000000","2.00000000"]],"asks":[]}}'


def test_file_is_gzip_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl.gz"
    with RecordingWriter(path, url="ws://h:1/stream?streams=btcusdt@depth5@100ms") as writer:
        writer.write(1_790_000_000_000_000_000, COMBINED)
        writer.write(1_790_000_000_100_000_000, 'odd "text" \\ ü')
    lines = gzip.decompress(path.read_bytes()).splitlines()
    assert orjson.loads(lines[0]) == {
        "meta": {"format": "bookfeed-recording/1", "url": "ws://h:1/stream?streams=btcusdt@depth5@100ms"}
    }
    assert orjson.loads(lines[1]) == {"t": 1_790_000_000_000_000_000, "frame": COMBINED}
    recording = read_recording(path)
    assert recording.url == "ws://h:1/stream?streams=btcusdt@depth5@100ms"
    assert recording.frames == (
        RecordedFrame(1_790_000_000_000_000_000, COMBINED),
        RecordedFrame(1_790_000_000_100_000_000, 'odd "text" \\ ü'),
    )


def test_bad_files_raise_recording_error_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(RecordingError):
        read_recording(tmp_path / "missing.jsonl.gz")
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"x": 1}\n'))
    with pytest.raises(ConfigError, match="not a recording line"):
        read_recording(bad)


def test_replay_items_from_combined_frames(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl.gz"
    with RecordingWriter(path, url=None) as writer:
        writer.write(10**9, COMBINED)
        writer.write(10**9 + 5 * 10**8, '{"result":null,"id":1}')
        writer.write(2 * 10**9, '{"stream":"ethusdt@depth20","data":{"lastUpdateId":2,"bids":[],"asks":[]}}')
    items = replay_items(read_recording(path))
    assert [(i.offset_s, i.stream) for i in items] == [(0.0, "btcusdt@depth5@100ms"), (1.0, "ethusdt@depth20")]
    assert items[0].combined == COMBINED.encode()
    assert items[0].raw == b'{"lastUpdateId":1,"bids":[["1.00000000","2.00000000"]],"asks":[]}'
    assert build_replayer(ReplayConfig(path)).symbols == ("BTCUSDT", "ETHUSDT")  # nothing is bound yet


def test_replay_items_from_raw_frames_use_the_url_stream(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl.gz"
    raw = '{"lastUpdateId":1,"bids":[],"asks":[]}'
    with RecordingWriter(path, url="ws://h:1/ws/btcusdt@depth20") as writer:
        writer.write(5, raw)
    (item,) = replay_items(read_recording(path))
    assert item.stream == "btcusdt@depth20" and item.raw == raw.encode()
    assert item.combined == b'{"stream":"btcusdt@depth20","data":' + raw.encode() + b"}"


def test_replay_speed_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="speed must be positive"):
        ReplayConfig(tmp_path / "r.jsonl.gz", speed=0)
