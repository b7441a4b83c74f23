"""The Redis publish script: one round trip that counts the publisher's rate and adds the
notification to the stream at most once per publish token (a retry after a lost reply
gets the first id back instead of a second entry). redis_pipeline runs it."""
from __future__ import annotations

import hashlib

# Adds ARGV[7..] (triples: hub key, type, fields JSON) to the stream, all in one go (a
# script runs whole), and answers {STORED, "id1,id2,..."}, {REPLAYED, ids}, {CONFLICT}
# or {OVER_RATE}. KEYS[4], if not "", is the publisher's Idempotency-Key: seen before
# with the same fingerprint (ARGV[4]) it answers the first ids and adds nothing; with
# another, CONFLICT. KEYS[2] is this publish's own token: a retry after a lost reply gets
# the first ids instead of a second copy. KEYS[3], if not "", counts the publisher's
# notifications this second: once it had reached ARGV[3] before these, nothing is added.
# A replay writes too (the token): a WAIT after it then covers what it answers, even on a
# connection that wrote nothing before (after a reconnect, or a failover).
# Each hub key it adds entries for gets one wake, an empty PUBLISH on ARGV[6] .. key, for
# the followers of the workers that have subscribers for that key (redis_wake).
PUBLISH_ONCE = """
local n = (#ARGV - 6) / 3
if KEYS[4] ~= '' then
  local seen = redis.call('HMGET', KEYS[4], 'ids', 'f')
  if seen[1] then
    if seen[2] == ARGV[4] then
      redis.call('SET', KEYS[2], seen[1], 'EX', ARGV[2])
      return {1, seen[1]}
    end
    return {2}
  end
end
local ids = redis.call('GET', KEYS[2])
if ids then
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  return {0, ids}
end
if KEYS[3] ~= '' then
  local count = redis.call('INCRBY', KEYS[3], n)
  if count == n then redis.call('EXPIRE', KEYS[3], 2) end
  if count - n >= tonumber(ARGV[3]) then return {3} end
end
local out, woken = {}, {}
for i = 0, n - 1 do
  local b = 7 + i * 3
  out[i + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 't', ARGV[b], 'y', ARGV[b + 1], 'n', ARGV[b + 2])
  if not woken[ARGV[b]] then
    woken[ARGV[b]] = true
    redis.call('PUBLISH', ARGV[6] .. ARGV[b], '')
  end
end
ids = table.concat(out, ',')
redis.call('SET', KEYS[2], ids, 'EX', ARGV[2])
if KEYS[4] ~= '' then
  redis.call('HSET', KEYS[4], 'ids', ids, 'f', ARGV[4])
  redis.call('EXPIRE', KEYS[4], ARGV[5])
end
return {0, ids}
"""
STORED, REPLAYED, CONFLICT, OVER_RATE = 0, 1, 2, 3
PUBLISH_ONCE_SHA = hashlib.sha1(PUBLISH_ONCE.encode()).hexdigest()
