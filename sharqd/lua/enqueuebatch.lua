-- ARGV[5] the jobs' fields: per job "queue_id job_id interval requeue_limit
-- max_queued_length " (space separated, "-" for no max length); ARGV[6..]
-- their payloads (JSON text), in the same order.  (Few arguments are much
-- cheaper to send than six per job, and this parses faster than JSON.)
-- Same outcome as enqueue.lua called for each job in order, with the
-- per-queue work (interval, ready time, counters) done once per queue.
-- Returns {code, length} per job, flattened: codes as enqueue.lua.
local reply, queues, order = {}, {}, {}
local i = 0
for qid, jid, interval, limit, max_length in
    string.gmatch(ARGV[5], '(%S+) (%S+) (%S+) (%S+) (%S+) ') do
  i = i + 1
  local q = queues[qid]
  if not q then
    local length = redis.call('LLEN', k_pending(qid))
    q = {payloads = k_payload(qid), before = length, length = length, seen = {},
         jids = {}, payload = {}, budget = {}}
    queues[qid] = q
    table.insert(order, qid)
  end
  local code
  if q.seen[jid] or redis.call('HEXISTS', q.payloads, jid) == 1 then
    code = 409
  elseif max_length ~= '-' and q.length >= tonumber(max_length) then
    code = 429
  else
    code = 201
    q.seen[jid] = true
    q.length = q.length + 1
    q.interval = interval
    table.insert(q.jids, jid)
    table.insert(q.payload, jid)
    table.insert(q.payload, ARGV[5 + i])
    table.insert(q.budget, jid)
    table.insert(q.budget, limit)
  end
  reply[2 * i - 1] = code
  reply[2 * i] = (code == 409) and 0 or q.length
end

local stored = 0
local g = GLOBAL .. ':stats:' .. MINUTE
for _, qid in ipairs(order) do
  local q = queues[qid]
  local n = #q.jids
  if n > 0 then
    stored = stored + n
    redis.call('RPUSH', k_pending(qid), unpack(q.jids))
    redis.call('HSET', q.payloads, unpack(q.payload))
    redis.call('HSET', k_budget(qid), unpack(q.budget))
    local meta = k_meta(qid)
    redis.call('PERSIST', meta)
    if redis.call('HGET', meta, 'override') ~= '1' then
      redis.call('HSET', meta, 'interval', q.interval)
    end
    if q.before == 0 then redis.call('HSET', meta, 'since', NOW) end
    set_ready(qid, ready_at(meta))
    redis.call('SADD', K_QUEUES, qid)
    local s = BASE .. ':stats:' .. qid .. ':' .. MINUTE
    redis.call('HINCRBY', s, 'enqueued', n)
    redis.call('PEXPIRE', s, 660000)
  end
end
if stored > 0 then
  redis.call('SADD', K_TYPES, QTYPE)
  redis.call('HINCRBY', g, 'enqueued', stored)
  redis.call('PEXPIRE', g, 660000)
end
notify_ready()
return reply
