-- ARGV[5] queue_id, [6] "1" to purge active jobs and the interval override.
-- Returns 1, or 0 for no such queue.
local qid = ARGV[5]
if redis.call('SISMEMBER', K_QUEUES, qid) == 0 then return 0 end
local payloads, budgets = k_payload(qid), k_budget(qid)
local pending = k_pending(qid)
for _, jid in ipairs(redis.call('LRANGE', pending, 0, -1)) do
  redis.call('HDEL', payloads, jid)
  redis.call('HDEL', budgets, jid)
  redis.call('HDEL', k_limit(qid), jid)
end
add_total('deleted', redis.call('LLEN', pending))  -- pending no more (stats.lua)
redis.call('DEL', pending)
unplace(qid)
redis.call('HDEL', k_meta(qid), 'since')
if ARGV[6] == '1' then
  local active = k_active(qid)
  for _, jid in ipairs(redis.call('SMEMBERS', active)) do
    redis.call('ZREM', K_DEADLINES, qid .. ':' .. jid)
    redis.call('HDEL', payloads, jid)
    redis.call('HDEL', budgets, jid, 'lease:' .. jid)
    redis.call('HDEL', k_limit(qid), jid)
  end
  redis.call('DEL', active)
  redis.call('HDEL', k_meta(qid), 'override')
end
forget_if_empty(qid)
return 1
