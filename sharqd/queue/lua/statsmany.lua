-- The figures of several queue types in one call (a scrape reads every
-- type): stats.lua's figures for each, O(log N) Redis time per type.
-- Sent without common.lua: it reads many types' keys, not one.
-- KEYS[1] the key base of the first type (a cluster routes by it; the
--         other types' keys are on the same node: sharqd groups them so)
-- ARGV[1] now in epoch ms, or "" to use the Redis server's clock
-- ARGV[2..] the key bases of the types, "<prefix>:{<queue_type>}"
-- Returns one string, cheap to decode: now, then one line per type,
-- "pending active ready_queues dead_letters earliest_ready totals..."
-- (earliest ready time in epoch ms, -1 when nothing is pending; the
-- totals in the order of TOTALS below), or "?" for a type whose pending
-- count has no base yet: stats.lua counts that once, alone, since it costs
-- O(queues) (this script writes nothing).
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- pending_base and the flow of pending jobs (as in stats.lua), then the
-- totals the answer carries, in operations.py's TOTALS order
local FIELDS = {'pending_base', 'enqueued', 'requeued', 'retried', 'dequeued',
                'deleted', 'finished', 'dead_lettered', 'rejected_duplicate',
                'rejected_max_queued_length'}
local lines = {string.format('%.0f', now)}
for i = 2, #ARGV do
  local base = ARGV[i]
  local t = redis.call('HMGET', base .. ':totals', unpack(FIELDS))
  local pending_base = tonumber(t[1])
  if not pending_base then
    lines[i] = '?'
  else
    local function n(k) return tonumber(t[k]) or 0 end
    local ready = base .. ':ready'
    local head = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')[2]
    lines[i] = string.format('%.0f %d %d %d %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f',
      pending_base + n(2) + n(3) + n(4) - n(5) - n(6),
      redis.call('ZCARD', base .. ':deadlines'),
      redis.call('ZCOUNT', ready, '-inf', now),
      redis.call('ZCARD', base .. ':dead'),
      head and tonumber(head) or -1,
      n(2), n(5), n(7), n(3), n(8), n(9), n(10))
  end
end
return table.concat(lines, '\n')
