-- ARGV[5] queue_id, [6] interval ms.  Returns 1, or 0 for no such queue.
local qid = ARGV[5]
if redis.call('SISMEMBER', K_QUEUES, qid) == 0 then return 0 end
local meta = k_meta(qid)
redis.call('HSET', meta, 'interval', ARGV[6], 'override', '1')
if redis.call('LLEN', k_pending(qid)) > 0 then
  set_ready(qid, ready_at(meta))
  notify_ready()
end
return 1
