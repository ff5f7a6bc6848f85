"""workers.ingest envelope checks that need no database: the id a batch is stored (and counted) under."""

from __future__ import annotations

from typing import Any

import pytest

from workers.envelope import batch_key

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("batch_id", ["feed1-42", "x" * 128, "caf\u00e9 1"])
def test_usable_batch_id_is_kept(batch_id: str) -> None:
    assert batch_key({"batch_id": batch_id, "frames": []}) == batch_id


@pytest.mark.parametrize(
    "payload",
    [
        {"batch_id": "nul\x00"},
        {"batch_id": "\ud800"},
        {"batch_id": "x" * 129},
        {"batch_id": ""},
        {"batch_id": ["a"]},
        {"frames": []},
        [1, 2],
        "a\x00\ud800",
        None,
    ],
    ids=["nul", "surrogate", "too-long", "empty", "list", "missing", "list-payload", "str-payload", "none"],
)
def test_unusable_batch_id_is_derived_stably_and_safely(payload: Any) -> None:
    key = batch_key(payload)
    assert key == batch_key(payload) and key.startswith("derived-") and len(key) == 72
    assert key.isascii() and key.isprintable()


def test_derived_ids_differ_by_content() -> None:
    assert batch_key({"batch_id": "", "frames": [[1, "a"]]}) != batch_key({"batch_id": "", "frames": [[1, "b"]]})
