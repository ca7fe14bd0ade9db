-- The figures of a type for /prometheus and the dashboard, read in bounded
-- steps so that no call holds Redis long, however many queues the type has.
-- ARGV[5] offset into the type's ready set (queues with pending jobs),
-- [6] step: sums the pending lengths of up to step of those queues.
-- Returns {pending in those queues}; the call at offset 0 adds the
-- type-wide figures, each O(1) or O(log N): active jobs, ready queues,
-- dead letters, earliest ready time (epoch ms, -1 when nothing is
-- pending), now (epoch ms), totals {field, value, ...}, and the size of
-- the ready set (for the calls at the other offsets).
local offset, step = tonumber(ARGV[5]), tonumber(ARGV[6])
local queues = redis.call('ZRANGE', K_READY, offset, offset + step - 1)
local pending = 0
for _, qid in ipairs(queues) do pending = pending + redis.call('LLEN', k_pending(qid)) end
if offset > 0 then return {pending} end
local head = redis.call('ZRANGE', K_READY, 0, 0, 'WITHSCORES')
return {pending, redis.call('ZCARD', K_DEADLINES), redis.call('ZCOUNT', K_READY, '-inf', NOW),
        redis.call('ZCARD', K_DEAD), head[2] and tonumber(head[2]) or -1, NOW,
        redis.call('HGETALL', K_TOTALS), redis.call('ZCARD', K_READY)}
