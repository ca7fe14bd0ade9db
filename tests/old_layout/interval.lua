-- ARGV[5] queue_id, [6] interval ms.  Returns 1, or 0 for no such queue.
local qid = ARGV[5]
if redis.call('SISMEMBER', K_QUEUES, qid) == 0 then return 0 end
redis.call('HSET', k_meta(qid), 'interval', ARGV[6], 'override', '1')
if redis.call('LLEN', k_pending(qid)) > 0 then
  place(qid)
  notify_ready()
end
return 1
