-- ARGV[5] lease ms, [6] count.  Takes up to count ready jobs, each as
-- dequeue.lua would one after the other: a queue whose interval is not 0
-- gives at most one, since taking a job moves its ready time out.
-- Returns {ms until the type's next ready time or -1 when it has no
-- pending job, then queue_id, job_id, payload, requeues_remaining,
-- pending length after, per job}
local lease, wanted = tonumber(ARGV[5]), tonumber(ARGV[6])
local reply, tally = {0}, {}
for _ = 1, wanted do
  local qid, jid, payload, budget, left = take_one(lease, tally)
  if not qid then break end
  local n = #reply
  reply[n + 1], reply[n + 2], reply[n + 3], reply[n + 4], reply[n + 5] =
    qid, jid, payload, budget, left
end
count_tally('dequeued', tally)
add_total('dequeued', (#reply - 1) / 5)
reply[1] = next_ready_in()
return reply
