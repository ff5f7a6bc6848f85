"""A malformed batch envelope never costs its valid frames, and the last resort records any payload at all.

Each test sends two valid frames beside one kind of bad field, straight through workers.ingest on a real PostgreSQL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, text

from models.errors import InvalidBookError, StorageError
from models.messages import make_batch
from tests.integration._frames import simple_book
from workers.envelope import UNKNOWN_EXCHANGE
from workers.ingest import ingest_batch, reject_batch
from workers.storage import MAX_REJECTED_RAW_CHARS

pytestmark = pytest.mark.integration

T0 = 1_790_000_000_000_000_000  # 2026-09-21T14:13:20Z in ns
YEAR_10000_NS = 253_402_300_800 * 10**9


def good(n: int = 2) -> list[tuple[int, str]]:
    return [(T0 + i, simple_book(100 + i, luid=i)) for i in range(n)]


def batch_with(*items: Any, **fields: Any) -> dict[str, Any]:
    """A feed batch of two valid frames followed by `items` (any JSON at all); `fields` override envelope keys."""
    payload: dict[str, Any] = dict(make_batch(batch_id="env", frames=good()))
    payload["frames"] = [*payload["frames"], *items]
    payload.update(fields)
    return payload


def rows(engine: Engine, sql: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql)).all())


def books(engine: Engine) -> list[int]:
    return [r.last_update_id for r in rows(engine, "SELECT last_update_id FROM order_books ORDER BY 1")]


def rejected(engine: Engine) -> list[Any]:
    return rows(engine, "SELECT reason, raw, exchange, batch_id, received_at FROM rejected_messages ORDER BY reason")


@pytest.mark.parametrize(
    "received_ns",
    [-1, YEAR_10000_NS, 2**70, True, 1.5e18, "1790000000000000000", None],
    ids=["negative", "year-10000", "beyond-int64", "bool", "float", "string", "null"],
)
def test_received_ns_out_of_range_rejects_that_frame_only(clean_db: Engine, received_ns: Any) -> None:
    result = ingest_batch(clean_db, batch_with([received_ns, simple_book(5, luid=9)]))
    assert (result.n_books, result.n_rejected) == (2, 1)
    assert books(clean_db) == [0, 1]
    [row] = rejected(clean_db)
    assert row.reason.startswith("received_ns ") and "is not an integer of ns in [1970, 10000)" in row.reason
    assert row.raw == simple_book(5, luid=9) and row.batch_id == "env"


@pytest.mark.parametrize("raw", [7, None, {"stream": "btcusdt@depth20"}, ["a"], True], ids=repr)
def test_non_text_raw_rejects_that_frame_only(clean_db: Engine, raw: Any) -> None:
    result = ingest_batch(clean_db, batch_with([T0 + 50, raw]))
    assert (result.n_books, result.n_rejected) == (2, 1)
    assert books(clean_db) == [0, 1]
    [row] = rejected(clean_db)
    assert row.reason == f"raw frame is {type(raw).__name__}, not text"


def test_lone_surrogate_in_raw_is_recorded_escaped(clean_db: Engine) -> None:
    result = ingest_batch(clean_db, batch_with([T0 + 50, '{"stream":"btc\ud800usdt@depth20"}']))
    assert (result.n_books, result.n_rejected) == (2, 1)
    [row] = rejected(clean_db)
    assert row.reason.startswith("not JSON")
    assert row.raw == '{"stream":"btc\\ud800usdt@depth20"}'


@pytest.mark.parametrize(
    "item", [[T0], [T0, "x", 1], "frame", None, {"received_ns": T0}], ids=["short", "long", "str", "null", "dict"]
)
def test_item_that_is_not_a_pair_rejects_that_item_only(clean_db: Engine, item: Any) -> None:
    result = ingest_batch(clean_db, batch_with(item))
    assert (result.n_books, result.n_rejected) == (2, 1)
    [row] = rejected(clean_db)
    assert row.reason == "batch item is not [received_ns, raw text]"


@pytest.mark.parametrize(
    "batch_id",
    ["nul\x00id", "", "x" * 129, 12, None, ["a"], "tab\tid", "\ud800"],
    ids=["nul", "empty", "too-long", "int", "null", "list", "control", "surrogate"],
)
def test_unusable_batch_id_is_replaced_by_a_stable_derived_one(
    clean_db: Engine, batch_id: Any, caplog: pytest.LogCaptureFixture
) -> None:
    payload = batch_with([T0 + 50, "not json"], batch_id=batch_id)
    with caplog.at_level(logging.WARNING, logger="workers.ingest"):
        first = ingest_batch(clean_db, payload)
    again = ingest_batch(clean_db, payload)  # a redelivery is still recognised
    assert (first.n_books, first.n_rejected, first.duplicate, again.duplicate) == (2, 1, False, True)
    assert first.batch_id.startswith("derived-") and len(first.batch_id) == 8 + 64
    assert books(clean_db) == [0, 1]
    assert [r.batch_id for r in rows(clean_db, "SELECT batch_id FROM ingest_batches")] == [first.batch_id]
    assert rejected(clean_db)[0].batch_id == first.batch_id
    assert "is unusable" in caplog.text


def test_gap_fields_with_nul_or_out_of_range_never_lose_the_batch(
    clean_db: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    gaps = [
        ["btcusdt@depth20", T0 - 10, T0 - 5, "reconnected: \x00 nul"],  # stored, NUL made storable
        ["btcusdt@depth20\x00", T0 - 10, T0 - 5, "nul in stream"],
        ["btcusdt@depth20", -5, T0, "negative start"],
        ["btcusdt@depth20", T0, YEAR_10000_NS, "end beyond year 9999"],
        ["btcusdt@depth20", T0, T0 + 1, 5],
        ["btcusdt@depth20", True, T0, "bool start"],
        "not a gap",
    ]
    with caplog.at_level(logging.WARNING, logger="workers.ingest"):
        result = ingest_batch(clean_db, batch_with(gaps=gaps))
    assert (result.n_books, result.n_rejected) == (2, 0)
    assert [r.reason for r in rows(clean_db, "SELECT reason FROM feed_gaps")] == ["reconnected: \ufffd nul"]
    assert caplog.text.count("ignoring malformed gap") == 6


def test_feed_rejections_are_recorded_with_their_reason(clean_db: Engine) -> None:
    feed_rejected = [
        [T0 + 7, "message of 70000 bytes exceeds 65536", '{"stream":"btcusdt@depth20","data":'],
        [T0 + 8, "nul \x00 in reason", "surrogate \udc80 in excerpt"],
        [-1, "bad time", "x"],
        [T0 + 9, 5, "reason not text"],
        "not a rejection",
    ]
    result = ingest_batch(clean_db, batch_with(rejected=feed_rejected))
    assert (result.n_books, result.n_rejected) == (2, 5)
    got = {(r.reason, r.raw) for r in rejected(clean_db)}
    assert ("message of 70000 bytes exceeds 65536", '{"stream":"btcusdt@depth20","data":') in got
    assert ("nul \ufffd in reason", "surrogate \\udc80 in excerpt") in got
    bad = "feed rejection is not [received_ns, reason, excerpt]"
    raws = {raw for reason, raw in got if reason == bad}
    assert raws == {'[-1, "bad time", "x"]', f'[{T0 + 9}, 5, "reason not text"]', "not a rejection"}


def test_frames_that_are_not_a_list_keep_the_gaps_and_feed_rejections(clean_db: Engine) -> None:
    payload = batch_with(
        frames={"oops": 1}, gaps=[["btcusdt@depth20", T0, T0 + 1, "stalled"]], rejected=[[T0, "too big", "{"]]
    )
    result = ingest_batch(clean_db, payload)
    assert (result.n_books, result.n_rejected) == (0, 2)
    assert {r.reason for r in rejected(clean_db)} == {"batch 'frames' is not a list", "too big"}
    assert len(rows(clean_db, "SELECT 1 FROM feed_gaps")) == 1


@pytest.mark.parametrize(
    "exchange",
    ["coinbase", "binance\tBTCUSDT\t20", "", None, 5, ["binance"]],
    ids=["other", "copy-injection", "empty", "null", "int", "list"],
)
def test_unknown_exchange_refuses_the_batch_whole(clean_db: Engine, exchange: Any) -> None:
    payload = batch_with([T0 + 50, "not json"], exchange=exchange)
    with pytest.raises(InvalidBookError, match="unknown exchange") as info:
        ingest_batch(clean_db, payload)
    assert books(clean_db) == []
    # What workers.deliveries does with a batch it cannot read:
    assert reject_batch(clean_db, payload, reason=f"unreadable batch: {info.value}") == 3
    got = rejected(clean_db)
    assert len(got) == 3 and {r.exchange for r in got} == {UNKNOWN_EXCHANGE}
    assert {r.reason for r in got} == {f"unreadable batch: {info.value}"}
    assert books(clean_db) == []


def test_reject_batch_leaves_a_stored_batch_alone(clean_db: Engine) -> None:
    # A batch committed by a delivery whose worker died before acknowledging it, redelivered past its budget, reaches
    # reject_batch: it must not end both stored and rejected. And a rejected batch is never stored afterwards.
    stored = batch_with([T0 + 50, "not json"], batch_id="stored-then-redelivered")
    assert ingest_batch(clean_db, stored).n_books == 2
    assert reject_batch(clean_db, stored, reason="delivered 9 times without being stored") == 0
    assert books(clean_db) == [0, 1]
    (only,) = rejected(clean_db)  # the frame the stored batch rejected itself
    assert "delivered" not in only.reason
    refused = batch_with(batch_id="rejected-then-redelivered")
    assert reject_batch(clean_db, refused, reason="r") == 2
    assert ingest_batch(clean_db, refused).duplicate
    assert books(clean_db) == [0, 1]
    with clean_db.connect() as conn:
        claims = conn.execute(text("SELECT batch_id, n_books, n_rejected FROM ingest_batches ORDER BY 1")).all()
    assert [tuple(c) for c in claims] == [("rejected-then-redelivered", 0, 2), ("stored-then-redelivered", 2, 1)]


def test_unknown_exchange_reason_names_it() -> None:
    with pytest.raises(InvalidBookError, match=r"^unknown exchange 'coinbase'$"):
        ingest_batch(None, batch_with(exchange="coinbase"))  # type: ignore[arg-type]


class _Odd:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


HOSTILE: dict[str, Any] = {
    "list": [1, 2, 3],
    "str-nul-surrogate": "a\x00b\ud800c",
    "int": 5,
    "none": None,
    "not-json-able": {"frames": [[T0, {1, 2}], _Odd()], "batch_id": _Odd()},
    "non-text-raw": {"v": 1, "exchange": "binance", "batch_id": "n", "frames": [[T0, 7], [T0 + 1, None]]},
    "frames-not-list": {"v": 1, "exchange": "binance", "batch_id": "x", "frames": "nope"},
    "no-frames": {"v": 1},
    "nul-everywhere": {"v": 1, "exchange": "bin\x00ance", "batch_id": "b\x00", "frames": [[T0, "r\x00\ud800"]]},
    "huge-raw": {"v": 1, "exchange": "binance", "batch_id": "h", "frames": [[T0, "x" * (MAX_REJECTED_RAW_CHARS + 5)]]},
    "deep": {"frames": [[T0, 1]], "deep": __import__("functools").reduce(lambda a, _: [a], range(5000), [])},
}


REASON = "unreadable batch: \x00 \ud800"
CLEAN_REASON = "unreadable batch: \ufffd \\ud800"  # NUL and a lone surrogate made storable


@pytest.mark.parametrize("payload", HOSTILE.values(), ids=HOSTILE.keys())
def test_reject_batch_records_any_payload(clean_db: Engine, payload: Any) -> None:
    n = reject_batch(clean_db, payload, reason=REASON)
    got = rejected(clean_db)
    assert n >= 1 and len(got) == n
    assert {r.reason for r in got} <= {CLEAN_REASON, f"{CLEAN_REASON} (batch 'frames' is not a list)"}
    assert all(len(r.raw) <= MAX_REJECTED_RAW_CHARS + 40 for r in got)
    assert {r.exchange for r in got} <= {"binance", UNKNOWN_EXCHANGE}


def test_reject_batch_keeps_frames_and_cuts_only_huge_text(clean_db: Engine) -> None:
    assert reject_batch(clean_db, HOSTILE["nul-everywhere"], reason="r") == 1
    assert reject_batch(clean_db, HOSTILE["huge-raw"], reason="r") == 1
    assert reject_batch(clean_db, HOSTILE["no-frames"], reason="r") == 1
    raws = sorted((r.raw for r in rejected(clean_db)), key=len)
    assert set(raws[:2]) == {'{"v": 1}', "r\ufffd\\ud800"}
    assert raws[2] == "x" * MAX_REJECTED_RAW_CHARS + f"...[cut from {MAX_REJECTED_RAW_CHARS + 5} characters]"
    assert {r.exchange for r in rejected(clean_db)} == {"binance", UNKNOWN_EXCHANGE}


@pytest.fixture
def broken_partition_function(clean_db: Engine) -> Iterator[Engine]:
    """bookfeed_ensure_partition failing for a reason of its own (as a revoked grant or a bug would)."""
    with clean_db.begin() as conn:
        conn.execute(text("ALTER FUNCTION bookfeed_ensure_partition(date) RENAME TO bookfeed_ensure_partition_real"))
        conn.execute(
            text(
                "CREATE FUNCTION bookfeed_ensure_partition(day date) RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'something else went wrong'; END $$"
            )
        )
    try:
        yield clean_db
    finally:
        with clean_db.begin() as conn:
            conn.execute(text("DROP FUNCTION bookfeed_ensure_partition(date)"))
            conn.execute(
                text("ALTER FUNCTION bookfeed_ensure_partition_real(date) RENAME TO bookfeed_ensure_partition")
            )


def test_refused_partition_rejects_that_day_only(clean_db: Engine) -> None:
    far = YEAR_10000_NS - 86_400 * 10**9  # 9999-12-31: the partition function refuses it (too far from now)
    result = ingest_batch(clean_db, batch_with([far, simple_book(5, luid=9)]))
    assert (result.n_books, result.n_rejected) == (2, 1)
    assert books(clean_db) == [0, 1]
    [row] = rejected(clean_db)
    assert row.reason.startswith("no partition for 9999-12-31: ") and "outside" in row.reason


def test_other_partition_errors_are_raised_not_turned_into_rejections(broken_partition_function: Engine) -> None:
    far = YEAR_10000_NS - 86_400 * 10**9
    with pytest.raises(StorageError, match="something else went wrong"):
        ingest_batch(broken_partition_function, batch_with([far, simple_book(5, luid=9)]))
    assert books(broken_partition_function) == [] and rejected(broken_partition_function) == []


@pytest.mark.parametrize("frame_by_frame", [False, True], ids=["batch", "frame-by-frame"])
def test_a_partition_dropped_under_a_running_worker_is_made_again_not_a_reason_to_reject(
    clean_db: Engine, frame_by_frame: bool
) -> None:
    # Today's partition is one this process trusts once it made it; dropped behind its back (by hand, or a database
    # re-created under running workers), the next batch of today makes it again and is stored, nothing rejected.
    now = time.time_ns()
    first = make_batch(batch_id="before-drop", frames=[(now, simple_book(100, luid=1))])
    assert ingest_batch(clean_db, first).n_books == 1
    day = datetime.fromtimestamp(now // 10**9, UTC).strftime("%Y%m%d")
    with clean_db.begin() as conn:
        conn.execute(text(f"DROP TABLE book_snapshots_p{day}"))
    second = make_batch(batch_id="after-drop", frames=[(now + 1, simple_book(101, luid=2))])
    result = ingest_batch(clean_db, second, frame_by_frame=frame_by_frame)
    assert (result.n_books, result.n_rejected) == (1, 0)
    assert books(clean_db) == [2] and rejected(clean_db) == []
