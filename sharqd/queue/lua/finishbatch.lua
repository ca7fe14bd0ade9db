-- ARGV[5] number of jobs n, then n times queue_id, job_id.  Finishes each
-- as finish.lua does.  Returns 1 (finished) or 0 (not active) per job.
local n = tonumber(ARGV[5])
local reply, done = {}, 0
for i = 0, n - 1 do
  reply[i + 1] = finish_job(ARGV[6 + 2 * i], ARGV[7 + 2 * i])
  done = done + reply[i + 1]
end
if done > 0 then
  count_all('finished', done)
  add_total('finished', done)
end
return reply
