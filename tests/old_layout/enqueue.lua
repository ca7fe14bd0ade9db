-- ARGV[5] queue_id, [6] job_id, [7] interval ms, [8] payload (JSON text),
-- [9] requeue limit, [10] max queued length or ""
-- Returns {201, pending length} | {409} duplicate | {429, pending length} full
local qid = ARGV[5]
local code, length = enqueue_job(qid, ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
if code == 201 then
  count('enqueued', qid)
  add_total('enqueued', 1)
  notify_ready()
else
  add_total(code == 409 and 'rejected_duplicate' or 'rejected_max_queued_length', 1)
end
return {code, length}
