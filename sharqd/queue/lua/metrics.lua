-- ARGV[5] "counts" | "idle" | "queue", [6] queue_id for "queue".  (The
-- queue ids of a type are read with SSCAN, in pages: see
-- Queue.queue_id_page.)
-- counts: {number of queues, minutes, enqueued, dequeued, dead, finished}
--         of the type (GET /metrics/ adds up the types of the registry)
-- idle:   1 when the type has no queue and no count in the last 11
--         minutes (it may leave the registry), else 0
-- queue:  {pending length, minutes, enqueued, dequeued, dead} (from the
--         queue's ring of counts, see count_queue)
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
  local slots = redis.call('HMGET', k_meta(qid), 'c0', 'c1', 'c2', 'c3', 'c4', 'c5', 'c6',
                           'c7', 'c8', 'c9')
  local by_minute = {}
  for _, slot in ipairs(slots) do
    if slot then
      local at, e, d, x = string.match(slot, '^(%d+) (%d+) (%d+) (%d+)$')
      by_minute[tonumber(at)] = {tonumber(e), tonumber(d), tonumber(x)}
    end
  end
  local minutes, enqueued, dequeued, dead = {}, {}, {}, {}
  for i = 9, 0, -1 do
    local minute = MINUTE - i * 60000
    local c = by_minute[minute] or {0, 0, 0}
    minutes[#minutes + 1] = minute
    enqueued[#enqueued + 1], dequeued[#dequeued + 1], dead[#dead + 1] = c[1], c[2], c[3]
  end
  return {redis.call('LLEN', k_pending(qid)), minutes, enqueued, dequeued, dead}
end
