-- ARGV[5] number of jobs n, then n times: queue_id, job_id, interval ms,
-- payload (JSON text), requeue limit, max queued length or "".
-- Returns {code, length} per job, flattened: codes as enqueue.lua.
local n = tonumber(ARGV[5])
local reply, counted = {}, {}
local stored = 0
for i = 0, n - 1 do
  local a = 6 + i * 6
  local qid = ARGV[a]
  local code, length = enqueue_job(qid, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
                                   ARGV[a + 4], ARGV[a + 5])
  reply[2 * i + 1], reply[2 * i + 2] = code, length
  if code == 201 then
    stored = stored + 1
    counted[qid] = (counted[qid] or 0) + 1
  end
end
if stored > 0 then
  redis.call('SADD', K_TYPES, QTYPE)
  -- the per-minute counters of count(), once per queue
  local g = GLOBAL .. ':stats:' .. MINUTE
  redis.call('HINCRBY', g, 'enqueued', stored)
  redis.call('PEXPIRE', g, 660000)
  for qid, c in pairs(counted) do
    local q = BASE .. ':stats:' .. qid .. ':' .. MINUTE
    redis.call('HINCRBY', q, 'enqueued', c)
    redis.call('PEXPIRE', q, 660000)
  end
end
notify_ready()
return reply
