"""feed.ids: `peek` (stream name and lastUpdateId by string search), control messages, and the reset rule."""

from __future__ import annotations

import orjson
import pytest

from feed.ids import control_event, is_reset, is_whole_frame, peek
from tests.factories import depth_samples, diff_depth_sample, make_frame

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("raw", depth_samples())
def test_peek_fixture_frames(raw: str) -> None:
    msg = orjson.loads(raw)
    assert peek(raw) == (msg["stream"], msg["data"]["lastUpdateId"])


def test_peek_built_frame() -> None:
    assert peek(make_frame("ethusdt", 5, speed=None, last_update_id=7)) == ("ethusdt@depth5", 7)


def test_peek_diff_depth_frame_has_no_last_update_id() -> None:
    assert peek(diff_depth_sample()) == ("btcusdt@depth@100ms", None)


@pytest.mark.parametrize(
    "raw",
    [
        '{"result":null,"id":1}',
        '{"e":"serverShutdown","E":1}',
        '{"lastUpdateId":1,"bids":[],"asks":[]}',  # a raw (non-combined) partial-depth payload
        '{ "stream": "btcusdt@depth5", "data": {"lastUpdateId": 1}}',  # not compact
        "",
        "ping",
        "[]",
    ],
)
def test_peek_non_combined_text(raw: str) -> None:
    assert peek(raw) == (None, None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"stream":"btcusdt@depth5","data":{"bids":[],"asks":[]}}', ("btcusdt@depth5", None)),
        ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":"12","bids":[]}}', ("btcusdt@depth5", None)),
        ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":-1}}', ("btcusdt@depth5", None)),
        ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":null}}', ("btcusdt@depth5", None)),
        ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":' + "9" * 20 + "}}", ("btcusdt@depth5", None)),
        ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":' + "9" * 19 + "}}", ("btcusdt@depth5", None)),
        ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":' + str(2**63) + "}}", ("btcusdt@depth5", None)),
        ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":' + str(2**63 - 1) + "}}", ("btcusdt@depth5", 2**63 - 1)),
        ('{"stream":"btcusdt@depth5","data":{"lastUpdateId":0}}', ("btcusdt@depth5", 0)),
        ('{"stream":"btcusdt@depth5', (None, None)),
    ],
    ids=["missing", "string", "negative", "null", "20-digits", "19-nines", "2**63", "2**63-1", "zero", "truncated"],
)
def test_peek_without_a_usable_last_update_id(raw: str, expected: tuple[str | None, int | None]) -> None:
    assert peek(raw) == expected


def test_peek_superscript_digit_is_not_a_crash() -> None:
    assert peek('{"stream":"btcusdt@depth5","data":{"lastUpdateId":\u00b2}}') == ("btcusdt@depth5", None)


def test_peek_reads_ascii_digits_only() -> None:
    arabic_nines = "\u0669" * 19
    assert peek('{"stream":"btcusdt@depth5","data":{"lastUpdateId":' + arabic_nines + "}}") == ("btcusdt@depth5", None)


@pytest.mark.parametrize("cut", [30, 40, 45, 48])
def test_peek_truncated_frame_has_no_last_update_id(cut: int) -> None:
    # A frame cut inside its lastUpdateId must not read as a smaller (stale) id: the feed would drop it.
    raw = '{"stream":"btcusdt@depth20","data":{"lastUpdateId":6643542120,"bids":[],"asks":[]}}'
    _stream, luid = peek(raw[:cut])
    assert luid is None or luid == 6643542120
    assert peek(raw) == ("btcusdt@depth20", 6643542120)


def test_peek_caps_the_stream_name_at_100_characters() -> None:
    name = "a" * 100
    assert peek('{"stream":"' + name + '","data":{"lastUpdateId":1}}') == (name, 1)
    assert peek('{"stream":"' + name + 'b","data":{"lastUpdateId":1}}') == (None, None)
    assert peek('{"stream":"' + "a" * (1 << 20) + '","data":{"lastUpdateId":1}}') == (None, None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"e":"serverShutdown","E":1790000000000}', "serverShutdown"),
        ('{"result":null,"id":1}', "reply"),
        ('{"error":{"code":2},"id":1}', "reply"),
        ('{"stream":"btcusdt@depth20","data":{}}', None),
        ("garbage", None),
        ('{"e":"serverShutdown"' + " " * 5_000 + "}", None),  # too long to be a control message
    ],
)
def test_control_events(raw: str, expected: str | None) -> None:
    assert control_event(raw) == expected


@pytest.mark.parametrize(
    ("last", "luid", "reset"),
    [(1_000, 999, False), (1_000, 0, False), (10_000, 4_000, True), (10_000, 6_000, False), (2_000_001, 1, True)],
)
def test_an_id_far_below_the_last_is_a_reset(last: int, luid: int, reset: bool) -> None:
    assert is_reset(last, luid) is reset


def test_only_a_whole_frame_with_that_id_counts_as_whole() -> None:
    raw = '{"stream":"btcusdt@depth20","data":{"lastUpdateId":7,"bids":[],"asks":[]}}'
    assert is_whole_frame(raw, 7)
    assert not is_whole_frame(raw, 8)
    assert not is_whole_frame(raw[:-5], 7)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"stream":"a@depth5","data":{"E":1,"lastUpdateId":5,"bids":[]}}', ("a@depth5", 5)),
        ('{"stream":"a@depth5","data":{"E":1,"lastUpdateId":"5","lastUpdateId":6}}', ("a@depth5", None)),
        ('{"stream":"a@depth5","data":{"lastUpdateId":5x}}', ("a@depth5", None)),
    ],
    ids=["not-first", "first-occurrence-only", "not-followed-by-comma-or-brace"],
)
def test_peek_reads_the_first_last_update_id_wherever_it_is(raw: str, expected: tuple[str, int | None]) -> None:
    assert peek(raw) == expected
