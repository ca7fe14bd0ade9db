-- ARGV[5] number of jobs n, then n times queue_id, job_id, lease id or "".
-- Finishes each as finish.lua does.  Returns 1 (finished), 0 (not active)
-- or 2 (not the current lease) per job.
local n = tonumber(ARGV[5])
local reply, done = {}, 0
for i = 0, n - 1 do
  reply[i + 1] = finish_job(ARGV[6 + 3 * i], ARGV[7 + 3 * i], ARGV[8 + 3 * i])
  if reply[i + 1] == 1 then done = done + 1 end
end
if done > 0 then
  count_all('finished', done)
  add_total('finished', done)
end
notify_ready()
return reply
