"""The outbox's Lua scripts (see workers/outbox.py for the layout they keep). Each runs atomically in Redis; at its
memory limit Redis refuses a script at its first write that may grow memory, before anything is written.

KEYS and ARGV are documented above each script; the enqueue script, shared with the feed, is in models/outbox.py."""

from __future__ import annotations

__all__ = ["COMPLETE_LUA", "DELIVER_LUA", "REAP_LUA", "RESEQUENCE_LUA"]


# A worker starts a message: raise the delivered mark, count the delivery, read the payload (false: completed).
# KEYS: payload, delivered, the batch's deliveries counter. ARGV: batch id, message seq, counter TTL (s).
DELIVER_LUA = """
local seq = tonumber(ARGV[2])
if seq > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], ARGV[2]) end
local payload = redis.call('HGET', KEYS[1], ARGV[1])
if not payload then return {false, 0} end
local n = redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return {payload, n}
"""

# A batch is committed: out of the outbox, and its deliveries counter with it (a later delivery finds no payload and
# counts nothing; kept for its day, the counters of the whole market's 1.3 million batches a day took about 190 MB of
# Redis). KEYS: payload, seq, meta, suspects, the batch's deliveries counter. ARGV: batch id.
COMPLETE_LUA = """
for i = 1, 4 do
  if i == 2 then redis.call('ZREM', KEYS[i], ARGV[1]) else redis.call('HDEL', KEYS[i], ARGV[1]) end
end
redis.call('DEL', KEYS[5])
return 0
"""

# kombu puts a message back in the queue: its batch takes a new place in the sequence (same transaction).
# KEYS: seq, counter, suspects. ARGV: batch id.
RESEQUENCE_LUA = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[2]), ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return 0
"""

# One reaper pass over at most ARGV[3] batches below the delivered mark (the whole counter when the queue is empty).
# A batch whose message is not unacknowledged is a suspect; one still a suspect, at the same sequence, ARGV[2]
# seconds after it was first seen is returned as lost: {mark, looked at, {id, seq, meta, ...}}.
# KEYS: seq, meta, counter, delivered, suspects, unacked, queue, cursor. ARGV: now (s), grace (s), limit.
REAP_LUA = """
local mark = tonumber(redis.call('GET', KEYS[4]) or '0')
if redis.call('LLEN', KEYS[7]) == 0 then
  mark = math.max(mark, tonumber(redis.call('GET', KEYS[3]) or '0') + 1)
end
local limit = tonumber(ARGV[3])
local from = redis.call('GET', KEYS[8]) or '0'
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. from, '(' .. mark, 'WITHSCORES', 'LIMIT', 0, limit)
if #rows < 2 * limit then redis.call('DEL', KEYS[8]) else redis.call('SET', KEYS[8], rows[#rows]) end
local now, grace, lost = tonumber(ARGV[1]), tonumber(ARGV[2]), {}
for i = 1, #rows, 2 do
  local id, seq = rows[i], rows[i + 1]
  local meta = redis.call('HGET', KEYS[2], id) or ''
  local mseq = string.match(meta, '^(%d+)')
  if mseq and redis.call('HEXISTS', KEYS[6], id .. '#' .. mseq) == 1 then
    redis.call('HDEL', KEYS[5], id)
  else
    local seen = redis.call('HGET', KEYS[5], id)
    local s0, t0 = nil, nil
    if seen then s0, t0 = string.match(seen, '^(%S+) (%S+)$') end
    if s0 == seq then
      if now - tonumber(t0) >= grace then
        lost[#lost + 1] = id
        lost[#lost + 1] = seq
        lost[#lost + 1] = meta
      end
    else
      redis.call('HSET', KEYS[5], id, seq .. ' ' .. ARGV[1])
    end
  end
end
return {mark, #rows / 2, lost}
"""
