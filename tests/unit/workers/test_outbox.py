"""workers.outbox without Redis: the first message of a batch is what a worker's first delivery counts from, task
arguments that are references, and the message as a worker's Celery reads it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from models.outbox import FIRST_DELIVERY
from workers import outbox
from workers.deliveries import Tries
from workers.outbox import _loads

pytestmark = pytest.mark.unit


def test_the_feeds_first_message_carries_the_retry_counts_a_first_delivery_starts_from() -> None:
    assert Tries().as_kwargs() == FIRST_DELIVERY


def _joined(parts: list[str], seq: int) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(str(seq).join(parts))
    return message


def test_the_message_carries_the_reference_its_sequence_and_a_tag_of_both() -> None:
    parts = outbox.message_parts(
        batch_id="f-7", task_id="t-1", kwargs={"outage_retries": 2, "poison_retries": 0}, retries=3, eta="2030-01-01"
    )
    message = _joined(parts, 41)
    args, kwargs, _embed = json.loads(message["body"])
    assert args == [{"batch_id": "f-7", "seq": 41}]
    assert kwargs == {"outage_retries": 2, "poison_retries": 0}
    assert message["headers"]["argsrepr"] == "[{'batch_id': 'f-7', 'seq': 41}]"  # what Flower shows
    assert (message["headers"]["retries"], message["headers"]["eta"]) == (3, "2030-01-01")
    assert message["headers"]["bookfeed_outbox"] == "f-7"
    assert message["properties"]["delivery_tag"] == "f-7#41"
    assert message["properties"]["body_encoding"] is None
    assert outbox.reference(args[0]) == outbox.Ref("f-7", 41)


def test_a_batch_id_holding_the_mark_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be enqueued"):
        outbox.message_parts(batch_id=f"x{outbox.SEQ_MARK}", task_id="t", kwargs={})


@pytest.mark.parametrize(
    "arg",
    [
        {"v": 1, "exchange": "binance", "batch_id": "b", "frames": []},  # a whole batch
        {"batch_id": "b", "seq": 1, "extra": 0},
        {"batch_id": "b", "seq": True},
        {"batch_id": "b", "seq": -1},
        {"batch_id": "", "seq": 1},
        {"batch_id": 7, "seq": 1},
        "b",
        None,
    ],
    ids=repr,
)
def test_anything_but_a_reference_is_a_whole_batch(arg: Any) -> None:
    assert outbox.reference(arg) is None


def test_tries_travel_in_the_outbox_meta() -> None:
    assert outbox._tries("12 3 1") == Tries(outage=3, poison=1)
    assert outbox._tries("") == Tries()
    assert outbox._tries("12 x 1") == Tries()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"v":1,"batch_id":"b","exchange":"binance","frames":[[1700000000000000000,"{\\"stream\\":\\"x\\"}"]]}',
        b'{"v":1,"frames":[[1,"\\ud800 lone surrogate"]]}',  # orjson refuses it, json reads it
        b'{"v":1,"frames":[[NaN,"x"]]}',
        '{"v":1,"exchange":"binance","frames":[]}',
    ],
)
def test_payloads_read_as_json_reads_them(raw: bytes | str) -> None:
    assert _loads(raw) == json.loads(raw) or repr(_loads(raw)) == repr(json.loads(raw))  # NaN != NaN


def test_a_payload_that_is_not_json_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        _loads(b"{not json")
