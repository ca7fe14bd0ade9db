-- ARGV[5] lease ms (time the worker has to finish)
-- Returns nil when nothing is ready, -1 when the type is paused, else
-- {queue_id, job_id, payload, requeues_remaining, pending length after, lease id}
if type_policy().type_paused then return -1 end
local tally = {}
local qid, jid, payload, budget, left, lease_id = take_one(tonumber(ARGV[5]), tally)
if not qid then return nil end
count('dequeued', qid)
add_total('dequeued', 1)
return {qid, jid, payload, budget, left, lease_id}
