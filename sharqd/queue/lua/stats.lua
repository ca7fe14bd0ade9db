-- The figures of a type for /prometheus and the dashboard, read in bounded
-- steps so that no call holds Redis long, however many queues the type has.
-- ARGV[5] offset into the type's ready set (queues with pending jobs),
-- [6] step: sums the pending lengths of up to step of those queues.
-- Returns {next offset (0 when done), pending in those queues}; the call at
-- offset 0 adds the type-wide figures, each O(1) or O(log N):
-- active jobs, ready queues, dead letters, earliest ready time (epoch ms,
-- -1 when nothing is pending), now (epoch ms), totals {field, value, ...}.
local offset, step = tonumber(ARGV[5]), tonumber(ARGV[6])
local queues = redis.call('ZRANGE', K_READY, offset, offset + step - 1)
local pending = 0
for _, qid in ipairs(queues) do pending = pending + redis.call('LLEN', k_pending(qid)) end
local reply = {#queues == step and offset + step or 0, pending}
if offset == 0 then
  local head = redis.call('ZRANGE', K_READY, 0, 0, 'WITHSCORES')
  reply[3] = redis.call('ZCARD', K_DEADLINES)
  reply[4] = redis.call('ZCOUNT', K_READY, '-inf', NOW)
  reply[5] = redis.call('ZCARD', K_DEAD)
  reply[6] = head[2] and tonumber(head[2]) or -1
  reply[7] = NOW
  reply[8] = redis.call('HGETALL', BASE .. ':totals')
end
return reply
