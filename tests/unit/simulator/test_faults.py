"""Fault settings (one name each, validated), per-frame fault choice and faulty payloads."""

from __future__ import annotations

import dataclasses
import random

import orjson
import pytest

from models.errors import ConfigError
from simulator import (
    FAULT_SETTINGS,
    MALFORMED_VARIANTS,
    FaultConfig,
    FaultKind,
    book_at,
    choose_fault,
    faulty_payload,
    make_spec,
)

pytestmark = pytest.mark.unit

BOOK = book_at(make_spec("BTCUSDT", seed=0), seed=0, n=10)


def test_settings_are_the_config_fields() -> None:
    assert tuple(f.name for f in dataclasses.fields(FaultConfig)) == FAULT_SETTINGS
    assert set(FaultConfig().to_dict()) == set(FAULT_SETTINGS)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"malformed_fraction": 1.5}, "malformed_fraction must be in [0, 1]"),
        ({"one_sided_fraction": float("nan")}, "one_sided_fraction must be in [0, 1]"),
        ({"delay_ms": -1}, "delay_ms must be in [0, 3600000)"),
        ({"drop_every_s": -2}, "drop_every_s must be >= 0"),
        ({"stall_every_s": float("inf")}, "stall_every_s must be >= 0"),
        ({"stall_for_s": 0}, "stall_for_s must be positive"),
        ({"malformed": 0.1}, "unknown fault setting(s) ['malformed']"),
    ],
)
def test_bad_settings_are_config_errors(changes: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        FaultConfig().replace(changes)
    assert message in str(exc.value)


def test_zero_switches_periodic_faults_off() -> None:
    assert FaultConfig(drop_every_s=0, stall_every_s=0) == FaultConfig()
    assert FaultConfig().replace({"drop_every_s": 3}).to_dict()["drop_every_s"] == 3


@pytest.mark.parametrize(
    ("u", "expected"),
    [(0.05, FaultKind.MALFORMED), (0.15, FaultKind.CROSSED), (0.35, FaultKind.ONE_SIDED), (0.7, None)],
)
def test_choose_fault_stacks_fractions(u: float, expected: FaultKind | None) -> None:
    settings = FaultConfig(malformed_fraction=0.1, crossed_fraction=0.2, one_sided_fraction=0.3)
    assert choose_fault(u, settings) is expected


def test_choose_fault_rates() -> None:
    rng = random.Random(1)
    settings = FaultConfig(malformed_fraction=0.25, one_sided_fraction=0.5)
    kinds = [choose_fault(rng.random(), settings) for _ in range(20_000)]
    assert abs(kinds.count(FaultKind.MALFORMED) / 20_000 - 0.25) < 0.02
    assert abs(kinds.count(FaultKind.ONE_SIDED) / 20_000 - 0.5) < 0.02
    assert FaultKind.CROSSED not in kinds


def _broken(doc: object) -> bool:
    if not isinstance(doc, dict) or set(doc) != {"lastUpdateId", "bids", "asks"}:
        return True
    if not isinstance(doc["lastUpdateId"], int) or not isinstance(doc["bids"], list):
        return True
    try:
        levels = [(float(p), float(q)) for p, q in doc["bids"] + doc["asks"]]
    except (TypeError, ValueError):
        return True
    return any(q < 0 for _, q in levels)


@pytest.mark.parametrize("variant", MALFORMED_VARIANTS)
def test_malformed_variants_are_broken(variant: str) -> None:
    payload, what = faulty_payload(FaultKind.MALFORMED, BOOK, 20, random.Random(0), variant=variant)
    assert what == variant
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        assert variant == "not_json"
        return
    assert _broken(doc)


def test_crossed_and_one_sided() -> None:
    crossed = orjson.loads(faulty_payload(FaultKind.CROSSED, BOOK, 20, random.Random(0))[0])
    assert float(crossed["bids"][0][0]) > float(crossed["asks"][0][0])
    prices = [float(p) for p, _ in crossed["bids"]]
    assert prices == sorted(prices, reverse=True)
    sides = set()
    for seed in range(8):
        doc = orjson.loads(faulty_payload(FaultKind.ONE_SIDED, BOOK, 20, random.Random(seed))[0])
        assert (doc["bids"] == []) != (doc["asks"] == [])
        sides.add(doc["bids"] == [])
    assert sides == {True, False}


def test_faulty_payload_keeps_the_book_untouched() -> None:
    before = BOOK.payload(20)
    for kind in (FaultKind.MALFORMED, FaultKind.CROSSED, FaultKind.ONE_SIDED):
        faulty_payload(kind, BOOK, 20, random.Random(3))
    assert BOOK.payload(20) == before
    with pytest.raises(ValueError, match="not a book fault"):
        faulty_payload(FaultKind.DROP, BOOK, 20, random.Random(3))
