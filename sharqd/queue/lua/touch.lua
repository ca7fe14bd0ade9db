-- ARGV[5] queue_id, [6] job_id, [7] lease ms, [8] lease id or "".  Moves
-- an active job's deadline to now + lease.  Returns {the new deadline,
-- and the type's new deadline bound when it went down (see set_deadline)},
-- 0 when not active, -1 when the lease id is not the current one.
local qid, jid = ARGV[5], ARGV[6]
local ok = check_lease(qid, jid, ARGV[8])
if ok == 2 then return -1 end
local member = qid .. ':' .. jid
if ok == 0 then return 0 end
local deadline = NOW + tonumber(ARGV[7])
set_deadline(member, deadline)
return {deadline, DUE_MARK or nil}
