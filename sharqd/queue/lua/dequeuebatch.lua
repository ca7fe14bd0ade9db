-- ARGV[5] lease ms, [6] count.  Takes up to count ready jobs, each as
-- dequeue.lua would one after the other: a queue gives at most as many as
-- its rate (or interval) and its max_active allow, since each take moves
-- its ready time (or takes it out of the ready set).
-- Returns {-2} when the type is paused, else {ms until the type's next
-- ready time or -1 when no queue of it is ready or waiting for its rate,
-- then queue_id, job_id, payload, requeues_remaining, pending length after,
-- lease id, per job, then, when the type's deadline bound went down, the
-- new bound (see set_deadline)}
if type_policy().type_paused then return {-2} end
local lease, wanted = tonumber(ARGV[5]), tonumber(ARGV[6])
local reply, taken = {0}, 0
for _ = 1, wanted do
  local qid, jid, payload, budget, left, lease_id = take_one(lease)
  if not qid then break end
  taken = taken + 1
  local n = #reply
  reply[n + 1], reply[n + 2], reply[n + 3], reply[n + 4], reply[n + 5], reply[n + 6] =
    qid, jid, payload, budget, left, lease_id
end
if taken > 0 then count_all('dequeued', taken) end
add_total('dequeued', taken)
reply[1] = next_ready_in()
if DUE_MARK then reply[#reply + 1] = DUE_MARK end
return reply
