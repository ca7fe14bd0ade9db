-- ARGV[5] number of jobs n, then n times queue_id, job_id.  Finishes each
-- as finish.lua does.  Returns 1 (finished) or 0 (not active) per job.
local n = tonumber(ARGV[5])
local reply = {}
for i = 0, n - 1 do
  local qid, jid = ARGV[6 + 2 * i], ARGV[7 + 2 * i]
  if redis.call('ZREM', K_DEADLINES, qid .. ':' .. jid) == 0 then
    reply[i + 1] = 0
  else
    redis.call('SREM', k_active(qid), jid)
    redis.call('HDEL', k_payload(qid), jid)
    redis.call('HDEL', k_budget(qid), jid)
    redis.call('HDEL', k_limit(qid), jid)
    forget_if_empty(qid)
    reply[i + 1] = 1
  end
end
return reply
