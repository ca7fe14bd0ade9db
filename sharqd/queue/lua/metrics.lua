-- ARGV[5] "counts" | "idle" | "queue", [6] queue_id for "queue".  (The
-- queue ids of a type are read with SSCAN, in pages: see
-- Queue.queue_id_page.)
-- counts: {number of queues, minutes, enqueued, dequeued, dead, finished}
--         of the type (GET /metrics/ adds up the types of the registry)
-- idle:   1 when the type has no queue and no count in the last 11
--         minutes (it may leave the registry), else 0
-- queue:  {pending length, minutes, enqueued, dequeued, dead}
local function counts(prefix)
  local minutes, enqueued, dequeued, dead, finished = {}, {}, {}, {}, {}
  for i = 9, 0, -1 do
    local minute = MINUTE - i * 60000
    local c = redis.call('HMGET', prefix .. minute, 'enqueued', 'dequeued', 'dead',
                         'finished')
    table.insert(minutes, minute)
    table.insert(enqueued, tonumber(c[1]) or 0)
    table.insert(dequeued, tonumber(c[2]) or 0)
    table.insert(dead, tonumber(c[3]) or 0)
    table.insert(finished, tonumber(c[4]) or 0)
  end
  return minutes, enqueued, dequeued, dead, finished
end

local scope = ARGV[5]
if scope == 'counts' then
  local m, e, d, x, f = counts(BASE .. ':counts:')
  return {redis.call('SCARD', K_QUEUES), m, e, d, x, f}
elseif scope == 'idle' then
  if redis.call('EXISTS', K_QUEUES) == 1 then return 0 end
  for i = 0, 10 do
    if redis.call('EXISTS', BASE .. ':counts:' .. (MINUTE - i * 60000)) == 1 then return 0 end
  end
  return 1
else
  local qid = ARGV[6]
  local m, e, d, x = counts(BASE .. ':stats:' .. qid .. ':')
  return {redis.call('LLEN', k_pending(qid)), m, e, d, x}
end
