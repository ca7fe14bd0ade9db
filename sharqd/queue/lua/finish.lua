-- ARGV[5] queue_id, [6] job_id.  Returns 1 when finished, 0 when not active.
local done = finish_job(ARGV[5], ARGV[6])
if done == 1 then
  count_all('finished', 1)
  add_total('finished', 1)
end
return done
