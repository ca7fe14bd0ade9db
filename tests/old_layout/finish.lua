-- ARGV[5] queue_id, [6] job_id, [7] lease id or "".  Returns 1 when
-- finished, 0 when not active, 2 when the lease id is not the current one.
local done = finish_job(ARGV[5], ARGV[6], ARGV[7])
if done == 1 then
  count_all('finished', 1)
  add_total('finished', 1)
end
notify_ready()  -- a queue at its max_active cap may be ready again
return done
