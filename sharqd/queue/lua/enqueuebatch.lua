-- ARGV[5] the jobs' fields: per job "queue_id job_id interval requeue_limit
-- max_queued_length " (space separated, "-" for no max length); ARGV[6..]
-- their payloads (JSON text), in the same order.  (Few arguments are much
-- cheaper to send than six per job, and this parses faster than JSON.)
-- Same outcome as enqueue.lua called for each job in order, with the
-- per-queue work (duplicate check, interval, ready time, counters) done
-- once per queue.
-- Returns {code, length} per job, flattened: codes as enqueue.lua.
local jobs, queues, order = {}, {}, {}
for qid, jid, interval, limit, max_length in
    string.gmatch(ARGV[5], '(%S+) (%S+) (%S+) (%S+) (%S+) ') do
  local q = queues[qid]
  if not q then
    q = {asked = {}, n = 0}
    queues[qid] = q
    order[#order + 1] = qid
  end
  q.n = q.n + 1
  q.asked[q.n] = jid
  jobs[#jobs + 1] = {q, jid, interval, limit, max_length}
end

-- what each queue holds already: its length, and which of the job ids
for _, qid in ipairs(order) do
  local q = queues[qid]
  q.length = redis.call('LLEN', k_pending(qid))
  q.before = q.length
  q.seen = {}
  local held = redis.call('HMGET', k_payload(qid), unpack(q.asked))
  for k = 1, q.n do
    if held[k] then q.seen[q.asked[k]] = true end
  end
  q.jids, q.payload, q.budget = {}, {}, {}
end

local reply = {}
for i, job in ipairs(jobs) do
  local q, jid, max_length = job[1], job[2], job[5]
  local code
  if q.seen[jid] then
    code = 409
  elseif max_length ~= '-' and q.length >= tonumber(max_length) then
    code = 429
  else
    code = 201
    q.seen[jid] = true
    q.length = q.length + 1
    q.interval = job[3]
    local n = #q.jids + 1
    q.jids[n] = jid
    q.payload[2 * n - 1], q.payload[2 * n] = jid, ARGV[5 + i]
    q.budget[2 * n - 1], q.budget[2 * n] = jid, job[4]
  end
  reply[2 * i - 1] = code
  reply[2 * i] = (code == 409) and 0 or q.length
end

local stored = 0
for _, qid in ipairs(order) do
  local q = queues[qid]
  local n = #q.jids
  if n > 0 then
    stored = stored + n
    redis.call('RPUSH', k_pending(qid), unpack(q.jids))
    redis.call('HSET', k_payload(qid), unpack(q.payload))
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
  local g = GLOBAL .. ':stats:' .. MINUTE
  redis.call('SADD', K_TYPES, QTYPE)
  redis.call('HINCRBY', g, 'enqueued', stored)
  redis.call('PEXPIRE', g, 660000)
end
notify_ready()
add_enqueue_totals(reply)
return reply
