-- ARGV[5] "global" | "queue", [6] queue_id for "queue".  (The queue ids
-- of a type are read with SSCAN, in pages: see Queue.queue_id_page.)
-- global: {types, minutes, enqueued, dequeued, dead, finished}
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
if scope == 'global' then
  local m, e, d, x, f = counts(GLOBAL .. ':stats:')
  return {redis.call('SMEMBERS', K_TYPES), m, e, d, x, f}
else
  local qid = ARGV[6]
  local m, e, d, x = counts(BASE .. ':stats:' .. qid .. ':')
  return {redis.call('LLEN', k_pending(qid)), m, e, d, x}
end
