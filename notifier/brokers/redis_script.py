"""The Redis publish script: one round trip that counts the publisher's rate and adds the
notification to the stream at most once per publish token (a retry after a lost reply
gets the first id back instead of a second entry)."""
from __future__ import annotations

import hashlib
from typing import Any

import redis

# The answer is {STORED, id}, {REPLAYED, id}, {CONFLICT} or {OVER_RATE}.
# KEYS[4], if not "", is the publisher's Idempotency-Key: seen before with the same body
# fingerprint (ARGV[7]) it answers the first id and adds nothing; with another body,
# CONFLICT. KEYS[2] is this publish's own token: a retry after a lost reply gets the first
# id instead of a second entry. KEYS[3], if not "", counts the publisher's publishes this
# second: over ARGV[6], nothing is added.
PUBLISH_ONCE = """
if KEYS[4] ~= '' then
  local seen = redis.call('HMGET', KEYS[4], 'id', 'f')
  if seen[1] then
    if seen[2] == ARGV[7] then return {1, seen[1]} end
    return {2}
  end
end
local id = redis.call('GET', KEYS[2])
if id then return {0, id} end
if KEYS[3] ~= '' then
  local n = redis.call('INCR', KEYS[3])
  if n == 1 then redis.call('EXPIRE', KEYS[3], 2) end
  if n > tonumber(ARGV[6]) then return {3} end
end
id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 't', ARGV[2], 'y', ARGV[3], 'n', ARGV[4])
redis.call('SET', KEYS[2], id, 'EX', ARGV[5])
if KEYS[4] ~= '' then
  redis.call('HSET', KEYS[4], 'id', id, 'f', ARGV[7])
  redis.call('EXPIRE', KEYS[4], ARGV[8])
end
return {0, id}
"""
STORED, REPLAYED, CONFLICT, OVER_RATE = 0, 1, 2, 3
PUBLISH_ONCE_SHA = hashlib.sha1(PUBLISH_ONCE.encode()).hexdigest()


class NotSent(Exception):
    """No connection to Redis could be had: the command was certainly not applied."""


def run_publish_script(client: redis.Redis, keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
    """Run the publish script (by its SHA; the text only when Redis does not have it yet)."""
    pool = client.connection_pool
    try:
        conn = pool.get_connection()
    except redis.RedisError as exc:
        raise NotSent() from exc
    try:
        conn.send_command("EVALSHA", PUBLISH_ONCE_SHA, len(keys), *keys, *args)
        try:
            return conn.read_response()
        except redis.exceptions.NoScriptError:
            pass  # a new or restarted Redis: send the text once, it keeps it
        conn.send_command("EVAL", PUBLISH_ONCE, len(keys), *keys, *args)
        return conn.read_response()
    except redis.ResponseError:
        raise  # an answer: the connection is fine
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
