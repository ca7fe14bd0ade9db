-- ARGV[5] the jobs' fields: per job "queue_id job_id interval requeue_limit
-- max_queued_length " (space separated, "-" for no max length); ARGV[6..]
-- their payloads (JSON text), in the same order.  (Few arguments are much
-- cheaper to send than six per job, and this parses faster than JSON.)
-- Each job goes through enqueue_job, as in enqueue.lua, in order; the
-- stored jobs are counted once per queue at the end.
-- Returns {code, length} per job, flattened: codes as enqueue.lua.
local reply, tally, i = {}, {}, 0
for qid, jid, interval, limit, max_length in
    string.gmatch(ARGV[5], '(%S+) (%S+) (%S+) (%S+) (%S+) ') do
  i = i + 1
  if max_length == '-' then max_length = '' end
  local code, length = enqueue_job(qid, jid, interval, ARGV[5 + i], limit, max_length)
  if code == 201 then tally[qid] = (tally[qid] or 0) + 1 end
  reply[2 * i - 1], reply[2 * i] = code, length
end
count_tally('enqueued', tally)
notify_ready()
add_enqueue_totals(reply)
return reply
