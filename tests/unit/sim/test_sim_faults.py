"""Per-frame fault choice and faulty payloads."""

from __future__ import annotations

import random

import orjson
import pytest

from feed.sim import MALFORMED_VARIANTS, FaultKind, book_at, choose_fault, make_spec
from feed.sim._faults import crossed_payload, faulty_payload, malformed_payload, one_sided_payload

pytestmark = pytest.mark.unit

BOOK = book_at(make_spec("BTCUSDT", seed=0), seed=0, n=10)


@pytest.mark.parametrize(
    ("u", "expected"),
    [(0.05, FaultKind.MALFORMED), (0.15, FaultKind.CROSSED), (0.35, FaultKind.ONE_SIDED), (0.7, None)],
)
def test_choose_fault_stacks_fractions(u: float, expected: FaultKind | None) -> None:
    assert choose_fault(u, malformed=0.1, crossed=0.2, one_sided=0.3) is expected


def test_choose_fault_rates() -> None:
    rng = random.Random(1)
    kinds = [choose_fault(rng.random(), malformed=0.25, crossed=0.0, one_sided=0.5) for _ in range(20_000)]
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
    payload = malformed_payload(BOOK, 20, variant, random.Random(0))
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        assert variant == "not_json"
        return
    assert _broken(doc)


def test_crossed_and_one_sided() -> None:
    crossed = orjson.loads(crossed_payload(BOOK, 20, random.Random(0)))
    assert float(crossed["bids"][0][0]) > float(crossed["asks"][0][0])
    prices = [float(p) for p, _ in crossed["bids"]]
    assert prices == sorted(prices, reverse=True)
    for seed in range(4):
        doc = orjson.loads(one_sided_payload(BOOK, 20, random.Random(seed)))
        assert (doc["bids"] == []) != (doc["asks"] == [])


def test_faulty_payload_keeps_the_book_untouched() -> None:
    before = BOOK.payload(20)
    for kind in (FaultKind.MALFORMED, FaultKind.CROSSED, FaultKind.ONE_SIDED):
        faulty_payload(kind, BOOK, 20, random.Random(3))
    assert BOOK.payload(20) == before
    with pytest.raises(ValueError, match="not a book fault"):
        faulty_payload(FaultKind.DROP, BOOK, 20, random.Random(3))
