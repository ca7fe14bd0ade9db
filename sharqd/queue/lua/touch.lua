-- ARGV[5] queue_id, [6] job_id, [7] lease ms, [8] lease id or "".  Moves
-- an active job's deadline to now + lease.  Returns the new deadline, 0
-- when not active, -1 when the lease id is not the current one.
local qid, jid = ARGV[5], ARGV[6]
local ok = check_lease(qid, jid, ARGV[8])
if ok == 2 then return -1 end
local member = qid .. ':' .. jid
if ok == 0 then return 0 end
local deadline = NOW + tonumber(ARGV[7])
redis.call('ZADD', K_DEADLINES, deadline, member)
return deadline
