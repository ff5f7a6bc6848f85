"""The outbox's shared contract (see workers/outbox.py for how it works): its Redis keys, the enqueue script and the
task message it pushes. Pure: the feed (which publishes) and the workers (which retry and reap) both enqueue with it,
and the API reads the same keys, none of them importing another's code."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from models.vocabulary import INGEST_QUEUE, INGEST_TASK

__all__ = ["ENQUEUE_LUA", "FIRST_DELIVERY", "SEQ_MARK", "OutboxKeys", "message_parts"]

# Where a message's sequence number goes, until the enqueue script writes the real one: 2**53 + 1 is no sequence
# number, and no batch id, task id or tag of ours holds a 16-digit run.
SEQ_MARK = 9_007_199_254_740_993
_SEQ_MARKS = 3  # the task's argument, its repr in the headers (Flower), the delivery tag
# The retry counts a batch's first message carries (workers.deliveries.Tries starts there).
FIRST_DELIVERY: dict[str, int] = {"outage_retries": 0, "poison_retries": 0}

# The one enqueue: a new batch (payload given), or a batch already in the outbox again (payload ''), only if its
# sequence is still ARGV[3] when that is given. 0: published before; -1: completed meanwhile; -2: moved meanwhile.
# KEYS: payload, seq, meta, counter, queue. ARGV: batch id, payload or '', expected seq or '', outage retries, poison
# retries, then the message's parts (workers.outbox.message_parts), joined around the new sequence number.
ENQUEUE_LUA = """
local id = ARGV[1]
if ARGV[2] ~= '' then
  if redis.call('HEXISTS', KEYS[1], id) == 1 then return 0 end
  redis.call('HSET', KEYS[1], id, ARGV[2])
elseif redis.call('HEXISTS', KEYS[1], id) == 0 then
  return -1
elseif ARGV[3] ~= '' and tonumber(redis.call('ZSCORE', KEYS[2], id)) ~= tonumber(ARGV[3]) then
  return -2
end
local seq = redis.call('INCR', KEYS[4])
local s = string.format('%d', seq)
local parts = {ARGV[6]}
for i = 7, #ARGV do
  parts[#parts + 1] = s
  parts[#parts + 1] = ARGV[i]
end
redis.call('ZADD', KEYS[2], seq, id)
redis.call('HSET', KEYS[3], id, s .. ' ' .. ARGV[4] .. ' ' .. ARGV[5])
redis.call('LPUSH', KEYS[5], table.concat(parts))
return seq
"""


@dataclass(frozen=True, slots=True)
class OutboxKeys:
    """The Redis keys of one deployment (its broker key prefix)."""

    prefix: str = ""

    def _k(self, name: str) -> str:
        return f"{self.prefix}bookfeed:outbox:{name}"

    @property
    def payload(self) -> str:
        return self._k("payload")

    @property
    def seq(self) -> str:
        return self._k("seq")

    @property
    def meta(self) -> str:
        return self._k("meta")

    @property
    def counter(self) -> str:
        return self._k("counter")

    @property
    def delivered(self) -> str:
        return self._k("delivered")

    @property
    def suspects(self) -> str:
        return self._k("suspects")

    @property
    def cursor(self) -> str:
        return self._k("cursor")

    @property
    def reaped(self) -> str:
        return self._k("reaped")

    @property
    def queue(self) -> str:
        return self.prefix + INGEST_QUEUE

    @property
    def unacked(self) -> str:
        return self.prefix + "unacked"  # kombu's Redis transport: messages delivered and not yet acknowledged

    def enqueue_keys(self) -> list[str]:
        return [self.payload, self.seq, self.meta, self.counter, self.queue]


def message_parts(
    *,
    batch_id: str,
    task_id: str,
    kwargs: dict[str, int],
    retries: int = 0,
    eta: str | None = None,
    origin: str = "",
) -> list[str]:
    """The kombu Redis message of one `bookfeed.ingest_batch` task (Celery protocol 2, JSON, body not base64) whose
    argument is `{"batch_id": ..., "seq": N}`, split where N goes (ENQUEUE_LUA joins the parts around the number it
    takes). Raises ValueError for a batch id that holds SEQ_MARK's digits."""
    ref = {"batch_id": batch_id, "seq": SEQ_MARK}
    headers: dict[str, Any] = {
        "lang": "py",
        "task": INGEST_TASK,
        "id": task_id,
        "shadow": None,
        "eta": eta,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": retries,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": repr([ref]),
        "kwargsrepr": repr(kwargs),
        "origin": origin or f"gen{os.getpid()}@{socket.gethostname()}",
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        "bookfeed_outbox": batch_id,  # read by the restore hook
    }
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    message = {
        "body": json.dumps([[ref], kwargs, embed]),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": INGEST_QUEUE},
            "priority": 0,
            "body_encoding": None,
            "delivery_tag": f"{batch_id}#{SEQ_MARK}",
        },
    }
    parts = json.dumps(message).split(str(SEQ_MARK))
    if len(parts) != _SEQ_MARKS + 1:
        raise ValueError(f"batch id {batch_id[:80]!r} cannot be enqueued by reference")
    return parts
