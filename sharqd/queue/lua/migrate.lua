-- Moves one queue of layout 1 (earlier versions: a pending list of job ids;
-- per queue payload:, budget: with "lease:<job id>" fields, limit: and
-- active: keys, and a stats:<queue_id>:<minute> hash per minute) to
-- today's (see k_meta), in one atomic step.  ARGV[5] queue_id.
-- Returns 1 when moved, 0 when the queue holds nothing of the old layout
-- (moved already: running it again is harmless).
-- The meta hash and the type's keys (ready, deadlines, queues, dead
-- letters, counts, totals) are the same in both layouts.
local qid = ARGV[5]
local payloads, budgets = BASE .. ':payload:' .. qid, BASE .. ':budget:' .. qid
local limits, actives = BASE .. ':limit:' .. qid, BASE .. ':active:' .. qid
if redis.call('EXISTS', payloads, budgets, actives) == 0 then return 0 end
local meta, pending, jobs = k_meta(qid), k_pending(qid), k_jobs(qid)

-- "<requeues left> <requeue limit> <payload>", or nil when the payload is
-- gone; the limit was kept at the first requeue, else it is the budget
local function old_job(jid)
  local payload = redis.call('HGET', payloads, jid)
  if not payload then return nil end
  local budget = redis.call('HGET', budgets, jid) or '-1'
  local limit = redis.call('HGET', limits, jid) or budget
  return budget .. ' ' .. limit .. ' ' .. payload
end

local texts = {}
for _, jid in ipairs(redis.call('LRANGE', pending, 0, -1)) do
  local job = old_job(jid)
  if job then
    texts[#texts + 1] = jid .. ' ' .. job
    redis.call('HSET', jobs, jid, '')
  end
end
redis.call('DEL', pending)
for i = 1, #texts, 1000 do
  redis.call('RPUSH', pending, unpack(texts, i, math.min(i + 999, #texts)))
end

local active = 0
for _, jid in ipairs(redis.call('SMEMBERS', actives)) do
  local job = old_job(jid)
  if job then
    local lease = redis.call('HGET', budgets, 'lease:' .. jid) or '0'
    local id = add_active(job)
    redis.call('HSET', jobs, jid, lease .. ' ' .. id)
    active = active + 1
  end
end
redis.call('HSET', meta, 'active', active)

-- the counts of the last ten minutes into the ring (count_queue)
for i = 0, 10 do
  local minute = MINUTE - i * 60000
  local key = BASE .. ':stats:' .. qid .. ':' .. minute
  local c = redis.call('HMGET', key, 'enqueued', 'dequeued', 'dead')
  if i < 10 and (c[1] or c[2] or c[3]) then
    redis.call('HSET', meta, 'c' .. (minute / 60000) % 10, string.format(
      '%d %d %d %d', minute, tonumber(c[1]) or 0, tonumber(c[2]) or 0, tonumber(c[3]) or 0))
  end
  redis.call('DEL', key)
end
redis.call('DEL', payloads, budgets, limits, actives)
return 1
