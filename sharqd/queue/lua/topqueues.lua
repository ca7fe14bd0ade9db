-- The queues of a type with pending jobs, in bounded steps (see stats.lua).
-- ARGV[5] offset into the ready set, [6] step, [7] how many to keep, [8]
-- order: "pending" (most first, ties by id) or "queue_id".
-- Returns {next offset (0 when done), then per kept queue: queue_id,
-- pending, active, interval, ready time (epoch ms)}, the first in that
-- order among the step's queues.
local offset, step, keep = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local by_id = ARGV[8] == 'queue_id'
local queues = redis.call('ZRANGE', K_READY, offset, offset + step - 1, 'WITHSCORES')
local rows = {}
for i = 1, #queues, 2 do
  local qid = queues[i]
  rows[#rows + 1] = {qid, redis.call('LLEN', k_pending(qid)), tonumber(queues[i + 1])}
end
table.sort(rows, function(a, b)
  if a[2] ~= b[2] and not by_id then return a[2] > b[2] end
  return a[1] < b[1]
end)
local reply = {#queues == 2 * step and offset + step or 0}
for i = 1, math.min(keep, #rows) do
  local qid = rows[i][1]
  local n = #reply
  reply[n + 1], reply[n + 2] = qid, rows[i][2]
  reply[n + 3] = redis.call('SCARD', k_active(qid))
  reply[n + 4] = tonumber(redis.call('HGET', k_meta(qid), 'interval')) or 0
  reply[n + 5] = rows[i][3]
end
return reply
