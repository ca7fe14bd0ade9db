-- ARGV[5] lease ms (time the worker has to finish)
-- Returns nil when nothing is ready, else
-- {queue_id, job_id, payload, requeues_remaining, pending length after}
local lease = tonumber(ARGV[5])
-- the loop only repeats past a ready entry left without jobs (never in a
-- consistent store); it is bounded so a damaged store cannot block Redis
for _ = 1, 10 do
  local head = redis.call('ZRANGEBYSCORE', K_READY, '-inf', NOW, 'LIMIT', 0, 1)
  if #head == 0 then return nil end
  local qid = head[1]
  local pending = k_pending(qid)
  local jid = redis.call('LPOP', pending)
  if not jid then
    redis.call('ZREM', K_READY, qid)
  else
    local meta = k_meta(qid)
    redis.call('HSET', meta, 'last', NOW)
    redis.call('HDEL', meta, 'hold')
    local left = redis.call('LLEN', pending)
    if left > 0 then
      redis.call('ZADD', K_READY, ready_at(meta), qid)
    else
      redis.call('ZREM', K_READY, qid)
      redis.call('HDEL', meta, 'since')
    end
    redis.call('SADD', k_active(qid), jid)
    redis.call('ZADD', K_DEADLINES, NOW + lease, qid .. ':' .. jid)
    count('dequeued', qid)
    local payload = redis.call('HGET', k_payload(qid), jid)
    local budget = redis.call('HGET', k_budget(qid), jid)
    return {qid, jid, payload, budget, left}
  end
end
return nil
