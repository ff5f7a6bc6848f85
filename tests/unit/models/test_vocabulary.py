"""models.vocabulary: the stream-name grammar, its builder, and the one rule for the case of symbols."""

from __future__ import annotations

import pytest

from models.errors import MalformedPayloadError
from models.vocabulary import (
    DEFAULT_SYMBOLS,
    DEPTHS,
    MAX_LEVELS,
    SPEEDS,
    StreamName,
    normalise_symbol,
    parse_stream_name,
    stream_name,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("speed", SPEEDS)
def test_built_names_parse_back(depth: int, speed: str) -> None:
    name = stream_name("BTCUSDT", depth, speed)  # type: ignore[arg-type]
    assert name == f"btcusdt@depth{depth}" + ("@100ms" if speed == "100ms" else "")
    assert parse_stream_name(name) == StreamName("BTCUSDT", depth, 100 if speed == "100ms" else 1000)


def test_explicit_1000ms_suffix_is_the_default_speed() -> None:
    assert parse_stream_name("ethusdt@depth5@1000ms") == StreamName("ETHUSDT", 5, 1000)


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        ("btcusdt@depth20@100ms", StreamName("BTCUSDT", 20, 100)),
        ("ethusdt@depth20", StreamName("ETHUSDT", 20)),
        ("bnbusdt@depth5@1000ms", StreamName("BNBUSDT", 5)),
        ("trxusdt@depth10@100ms", StreamName("TRXUSDT", 10, 100)),
        ("1000satsusdt@depth5", StreamName("1000SATSUSDT", 5)),
    ],
)
def test_parse_stream_name(stream: str, expected: StreamName) -> None:
    assert parse_stream_name(stream) == expected


@pytest.mark.parametrize(
    "stream",
    [
        "btcusdt@trade",
        "btcusdt@depth",
        "btcusdt@depth@100ms",
        "btcusdt@depth7",
        "btcusdt@depth20@250ms",
        "btcusdt@bookTicker",
        "BTCUSDT@depth20",
        "b@depth20",
        "btcusdt@depth20 ",
        "btcusdt@depth20@100ms/ethusdt@depth20@100ms",
        "",
    ],
)
def test_unknown_stream_name_is_rejected(stream: str) -> None:
    with pytest.raises(MalformedPayloadError, match="unknown stream"):
        parse_stream_name(stream)


def test_a_builder_refuses_a_depth_binance_does_not_offer() -> None:
    with pytest.raises(ValueError, match="depth"):
        stream_name("BTCUSDT", 15)


def test_symbols_are_upper_case_and_stream_names_lower_case() -> None:
    assert all(s == normalise_symbol(s) for s in DEFAULT_SYMBOLS)
    assert normalise_symbol(" btcUsdt ") == "BTCUSDT"
    assert stream_name(normalise_symbol("btcusdt"), 20) == "btcusdt@depth20"
    for bad in ("btc-usdt", "b", "x" * 21, "ét"):
        with pytest.raises(ValueError, match="2-20 letters or digits"):
            normalise_symbol(bad)


def test_max_levels_is_the_deepest_stream() -> None:
    assert MAX_LEVELS == max(DEPTHS) == 20
