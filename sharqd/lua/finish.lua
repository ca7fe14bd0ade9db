-- ARGV[5] queue_id, [6] job_id.  Returns 1 when finished, 0 when not active.
local qid, jid = ARGV[5], ARGV[6]
if redis.call('ZREM', K_DEADLINES, qid .. ':' .. jid) == 0 then return 0 end
redis.call('SREM', k_active(qid), jid)
redis.call('HDEL', k_payload(qid), jid)
redis.call('HDEL', k_budget(qid), jid)
redis.call('HDEL', k_limit(qid), jid)
forget_if_empty(qid)
return 1
