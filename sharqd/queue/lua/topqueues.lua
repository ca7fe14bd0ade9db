-- The queues of a type (pending or active jobs), in bounded steps (see
-- stats.lua): ARGV[5] SSCAN cursor of the type's set of queues ("0" to
-- start), [6] step, [7] how many to keep, [8] order: "pending" (most
-- first, ties by id) or "queue_id".
-- Returns {next cursor ("0" when done), then per kept queue: queue_id,
-- pending, active, interval, ready time (epoch ms, -1 when nothing is
-- pending)}, the first in that order among the step's queues.  A queue
-- may come in two steps (SSCAN's rule): the caller keeps one.
local step, keep = tonumber(ARGV[6]), tonumber(ARGV[7])
local by_id = ARGV[8] == 'queue_id'
local scan = redis.call('SSCAN', K_QUEUES, ARGV[5], 'COUNT', step)
local rows = {}
for _, qid in ipairs(scan[2]) do
  rows[#rows + 1] = {qid, redis.call('LLEN', k_pending(qid))}
end
table.sort(rows, function(a, b)
  if a[2] ~= b[2] and not by_id then return a[2] > b[2] end
  return a[1] < b[1]
end)
local reply = {scan[1]}
for i = 1, math.min(keep, #rows) do
  local qid = rows[i][1]
  local n = #reply
  reply[n + 1], reply[n + 2] = qid, rows[i][2]
  local f = redis.call('HMGET', k_meta(qid), 'active', 'interval')
  reply[n + 3] = tonumber(f[1]) or 0
  reply[n + 4] = tonumber(f[2]) or 0
  reply[n + 5] = tonumber(redis.call('ZSCORE', K_READY, qid)) or -1
end
return reply
