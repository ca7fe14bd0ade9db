-- The figures of a type for /prometheus and the dashboard, in one call of
-- O(log N) Redis time, however many queues the type has.
-- Returns {pending jobs, active jobs, ready queues, dead letters, earliest
-- ready time (epoch ms, -1 when nothing is pending), now (epoch ms),
-- totals {field, value, ...}}.

-- Pending jobs, from the totals the scripts keep anyway: what came in
-- (enqueued, requeued, retried dead letters) less what went out (dequeued,
-- deleted with its queue), plus a base counted once, atomically, the first
-- time a type is read (jobs stored before the totals existed): O(queues)
-- that once, O(1) ever after, and nothing added to the hot path.
local t = redis.call('HMGET', K_TOTALS, 'pending_base', 'enqueued', 'requeued',
                     'retried', 'dequeued', 'deleted')
local function n(i) return tonumber(t[i]) or 0 end
local flow = n(2) + n(3) + n(4) - n(5) - n(6)
local base = tonumber(t[1])
if not base then
  local exact = 0
  for _, qid in ipairs(redis.call('SMEMBERS', K_QUEUES)) do
    exact = exact + redis.call('LLEN', k_pending(qid))
  end
  base = exact - flow
  redis.call('HSET', K_TOTALS, 'pending_base', base)
end
local head = redis.call('ZRANGE', K_READY, 0, 0, 'WITHSCORES')
return {base + flow, redis.call('ZCARD', K_DEADLINES), redis.call('ZCOUNT', K_READY, '-inf', NOW),
        redis.call('ZCARD', K_DEAD), head[2] and tonumber(head[2]) or -1, NOW,
        redis.call('HGETALL', K_TOTALS)}
