-- ARGV[5] batch size, [6] dead letter limit ("" for 10000).  Puts back up
-- to that many expired jobs of the type; a job whose budget is spent moves
-- to the type's dead letters instead.
-- Returns {requeued, dead, examined}
local due = redis.call('ZRANGEBYSCORE', K_DEADLINES, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[5]))
local dead_limit = tonumber(ARGV[6]) or 10000
local requeued, discarded = 0, 0
-- latest deadline first, so that the job dequeued first ends at the front
for i = #due, 1, -1 do
  local member = due[i]
  local sep = string.find(member, ':', 1, true)
  local qid, jid = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  redis.call('ZREM', K_DEADLINES, member)
  redis.call('SREM', k_active(qid), jid)
  local budgets = k_budget(qid)
  redis.call('HDEL', budgets, 'lease:' .. jid)
  local budget = tonumber(redis.call('HGET', budgets, jid)) or -1
  if budget == 0 then
    local limit = tonumber(redis.call('HGET', k_limit(qid), jid)) or 0
    local payload = redis.call('HGET', k_payload(qid), jid)
    if payload and dead_limit > 0 then
      local interval = tonumber(redis.call('HGET', k_meta(qid), 'interval')) or 0
      redis.call('ZADD', K_DEAD, redis.call('INCR', K_DEAD_SEQ), member)
      -- the payload is stored JSON text: spliced in last, never decoded
      redis.call('HSET', K_DEAD_JOBS, member, string.format(
        '{"queue_id":"%s","job_id":"%s","requeue_limit":%d,"requeues_spent":%d,'
        .. '"interval":%d,"failed_at":%d,"reason":"requeue limit spent","payload":',
        qid, jid, limit, limit, interval, NOW) .. payload .. '}')
      local extra = redis.call('ZCARD', K_DEAD) - dead_limit
      if extra > 0 then
        local oldest = redis.call('ZPOPMIN', K_DEAD, extra)
        for j = 1, #oldest, 2 do redis.call('HDEL', K_DEAD_JOBS, oldest[j]) end
      end
    end
    redis.call('HDEL', k_payload(qid), jid)
    redis.call('HDEL', budgets, jid)
    redis.call('HDEL', k_limit(qid), jid)
    count('dead', qid)
    -- its slot is free: a queue at its max_active cap may be ready again
    if redis.call('HEXISTS', k_meta(qid), 'held') == 1 then place(qid) end
    forget_if_empty(qid)
    discarded = discarded + 1
  else
    if budget > 0 then
      redis.call('HSETNX', k_limit(qid), jid, budget)  -- the original limit
      redis.call('HSET', budgets, jid, budget - 1)
    end
    local meta = k_meta(qid)
    if redis.call('LPUSH', k_pending(qid), jid) == 1 then
      redis.call('HSET', meta, 'since', NOW)
    end
    place(qid)
    requeued = requeued + 1
  end
end
notify_ready()
add_total('requeued', requeued)
add_total('dead_lettered', discarded)
return {requeued, discarded, #due}
