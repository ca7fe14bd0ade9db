-- ARGV[5] lease ms (time the worker has to finish)
-- Returns nil when nothing is ready, -1 when the type is paused, else
-- {queue_id, job_id, payload, requeues_remaining, pending length after, lease id}
-- and, when the type's deadline bound went down, the new bound (see
-- set_deadline)
if type_policy().type_paused then return -1 end
local qid, jid, payload, budget, left, lease_id = take_one(tonumber(ARGV[5]))
if not qid then return nil end
count_all('dequeued', 1)
add_total('dequeued', 1)
return {qid, jid, payload, budget, left, lease_id, DUE_MARK or nil}
