-- The index of due types, read by the requeue pass (sharqd/queue/requeue.py)
-- and kept by sharqd outside the types' slots, in a slot of its own:
-- KEYS[1] "<prefix>:{due}:at"  zset type -> a lower bound of the earliest
--                              deadline of the type's active jobs
-- KEYS[2] "<prefix>:{due}:gen" hash type -> generation (the number of its
--                              last mark, from KEYS[3]: never the same twice)
-- KEYS[3] "<prefix>:{due}:seq" counter of the marks
-- ARGV[1] the operation:
-- mark, then type, deadline pairs: lowers each type's bound to the
--   deadline (or adds it) and gives the type a new generation.
-- due, now ("": the Redis clock), limit: {type, generation, ...} of up to
--   limit types whose bound is <= now, the earliest first.
-- settle, then type, generation, next ("": none) triples: each type whose
--   generation is still the one given (no mark since the pass read it)
--   gets next as its bound, or leaves the index.  Returns how many did.
local at, gen, seq = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
if op == 'mark' then
  for i = 2, #ARGV, 2 do
    redis.call('ZADD', at, 'LT', ARGV[i + 1], ARGV[i])
    redis.call('HSET', gen, ARGV[i], redis.call('INCR', seq))
  end
  return #ARGV / 2
elseif op == 'due' then
  local now = tonumber(ARGV[2])
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  local types = redis.call('ZRANGEBYSCORE', at, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
  local reply = {}
  for i = 1, #types do
    reply[2 * i - 1] = types[i]
    reply[2 * i] = redis.call('HGET', gen, types[i]) or ''
  end
  return reply
elseif op == 'settle' then
  local n = 0
  for i = 2, #ARGV, 3 do
    local t = ARGV[i]
    if (redis.call('HGET', gen, t) or '') == ARGV[i + 1] then
      if ARGV[i + 2] == '' then
        redis.call('ZREM', at, t)
        redis.call('HDEL', gen, t)
      else
        redis.call('ZADD', at, ARGV[i + 2], t)
      end
      n = n + 1
    end
  end
  return n
end
return redis.error_reply('due.lua: unknown operation ' .. tostring(op))
