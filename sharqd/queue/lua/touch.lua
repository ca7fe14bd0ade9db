-- ARGV[5] queue_id, [6] job_id, [7] lease ms.  Moves an active job's
-- deadline to now + lease.  Returns the new deadline, or 0 when not active.
local member = ARGV[5] .. ':' .. ARGV[6]
if not redis.call('ZSCORE', K_DEADLINES, member) then return 0 end
local deadline = NOW + tonumber(ARGV[7])
redis.call('ZADD', K_DEADLINES, deadline, member)
return deadline
