-- ARGV[5] batch size.  Puts back up to that many expired jobs of the type.
-- Returns {requeued, discarded, examined}
local due = redis.call('ZRANGEBYSCORE', K_DEADLINES, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[5]))
local requeued, discarded = 0, 0
-- latest deadline first, so that the job dequeued first ends at the front
for i = #due, 1, -1 do
  local member = due[i]
  local sep = string.find(member, ':', 1, true)
  local qid, jid = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  redis.call('ZREM', K_DEADLINES, member)
  redis.call('SREM', k_active(qid), jid)
  local budgets = k_budget(qid)
  local budget = tonumber(redis.call('HGET', budgets, jid)) or -1
  if budget == 0 then
    redis.call('HDEL', k_payload(qid), jid)
    redis.call('HDEL', budgets, jid)
    forget_if_empty(qid)
    discarded = discarded + 1
  else
    if budget > 0 then redis.call('HSET', budgets, jid, budget - 1) end
    local meta = k_meta(qid)
    if redis.call('LPUSH', k_pending(qid), jid) == 1 then
      redis.call('HSET', meta, 'since', NOW)
    end
    redis.call('ZADD', K_READY, ready_at(meta), qid)
    requeued = requeued + 1
  end
end
return {requeued, discarded, #due}
