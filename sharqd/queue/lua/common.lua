-- Prepended to every queue script (see operations.py, load_script).
-- ARGV[1] key base of the queue type, "<prefix>:{<queue_type>}"
-- ARGV[2] key prefix (the scripts touch no key outside the type's slot)
-- ARGV[3] queue type
-- ARGV[4] now in epoch ms, or "" to use the Redis server's clock
-- ARGV[5..] arguments of the operation
local BASE, GLOBAL, QTYPE = ARGV[1], ARGV[2], ARGV[3]

local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local NOW = tonumber(ARGV[4]) or redis_now()
local MINUTE = NOW - NOW % 60000

-- keys of the queue type (all share the hash tag of BASE)
local K_READY = BASE .. ':ready'          -- zset queue_id -> ready time (queues with pending jobs)
local K_DEADLINES = BASE .. ':deadlines'  -- zset "queue_id:job_id" -> deadline (active jobs)
local K_QUEUES = BASE .. ':queues'        -- set of queue ids with pending or active jobs

local function k_pending(qid) return BASE .. ':pending:' .. qid end  -- list of job ids
local function k_active(qid) return BASE .. ':active:' .. qid end    -- set of job ids
local function k_payload(qid) return BASE .. ':payload:' .. qid end  -- hash job id -> payload
local function k_budget(qid) return BASE .. ':budget:' .. qid end    -- hash job id -> requeues left
local function k_meta(qid) return BASE .. ':meta:' .. qid end        -- hash, see below
local function k_limit(qid) return BASE .. ':limit:' .. qid end      -- hash job id -> original requeue limit (set at first requeue)
-- meta fields: interval, override ("1" when set by /interval/), last (last
-- dequeue), since (when pending became non-empty), hold (earliest next
-- dequeue kept from a queue that disappeared)

-- A dead queue's last dequeue is kept at least this long (R1, R6).
local KEEP_LAST_MS = 3600000

-- Count events of a kind (enqueued, dequeued, ...) per queue (tally[qid] =
-- n) and for the type, in this minute's counters (the type's in its own
-- slot: GET /metrics/ adds the types up); a counter's expiry is set when
-- its minute starts (the increment that made it n), not on every event.
-- Batches add up their tally first, so one call counts them all.
local function count_tally(kind, tally)
  local total = 0
  for qid, n in pairs(tally) do
    local q = BASE .. ':stats:' .. qid .. ':' .. MINUTE
    if redis.call('HINCRBY', q, kind, n) == n then redis.call('PEXPIRE', q, 660000) end
    total = total + n
  end
  if total > 0 then
    local g = BASE .. ':counts:' .. MINUTE
    if redis.call('HINCRBY', g, kind, total) == total then
      redis.call('PEXPIRE', g, 660000)
    end
  end
end

-- Count one event of a kind for a queue.
local function count(kind, qid)
  count_tally(kind, {[qid] = 1})
end

-- The time a queue with pending jobs may next be dequeued.
local function ready_at(meta)
  local m = redis.call('HMGET', meta, 'interval', 'last', 'since', 'hold')
  local at = tonumber(m[3]) or NOW
  if m[2] then at = math.max(at, tonumber(m[2]) + (tonumber(m[1]) or 0)) end
  if m[4] then at = math.max(at, tonumber(m[4])) end
  return at
end

-- Drop a queue that has neither pending nor active jobs.  Its interval
-- override ends; its last dequeue stays so R1 holds if it comes back.
local function forget_if_empty(qid)
  if redis.call('LLEN', k_pending(qid)) > 0 or redis.call('SCARD', k_active(qid)) > 0 then
    return
  end
  redis.call('SREM', K_QUEUES, qid)
  redis.call('DEL', k_payload(qid), k_budget(qid), k_limit(qid))
  local meta = k_meta(qid)
  local m = redis.call('HMGET', meta, 'interval', 'last')
  if not m[2] then
    redis.call('DEL', meta)
    return
  end
  local hold = tonumber(m[2]) + (tonumber(m[1]) or 0)
  redis.call('HDEL', meta, 'override', 'since')
  redis.call('HSET', meta, 'hold', hold)
  redis.call('PEXPIRE', meta, math.max(hold - NOW, KEEP_LAST_MS))
end

-- ---- shared by the long-poll, batch, dead-letter and lease scripts

local K_DEAD = BASE .. ':dead'          -- zset "queue_id:job_id" -> sequence (dead letters)
local K_DEAD_JOBS = BASE .. ':deadjobs' -- hash "queue_id:job_id" -> dead letter entry (JSON)
local K_DEAD_SEQ = BASE .. ':deadseq'   -- counter ordering the dead letters
local CHANNEL = BASE .. ':ready'        -- pub/sub channel: the type became ready earlier

-- Set a queue's ready time.  Remembers when this made the type's earliest
-- ready time earlier, so notify_ready() wakes the long-poll waiters (who
-- sleep until the earliest ready time they last saw) only when needed.
local LOWERED = false
local function set_ready(qid, at)
  if not LOWERED then
    local head = redis.call('ZRANGE', K_READY, 0, 0, 'WITHSCORES')
    if #head == 0 or at < tonumber(head[2]) then LOWERED = true end
  end
  redis.call('ZADD', K_READY, at, qid)
end

local function notify_ready()
  if LOWERED then redis.call('PUBLISH', CHANNEL, NOW) end
end

-- Milliseconds until the type's earliest ready queue is ready, or -1 when
-- the type has no pending job.
local function next_ready_in()
  local head = redis.call('ZRANGE', K_READY, 0, 0, 'WITHSCORES')
  if #head == 0 then return -1 end
  return math.max(0, tonumber(head[2]) - NOW)
end

-- Store one job (enqueue.lua, a dead letter put back).  interval "" keeps
-- the queue's interval if it has one.  Does not count.
-- Returns 201 | 409 | 429 and the pending length after (before for 429).
local function enqueue_job(qid, jid, interval, payload, limit, max_length)
  local payloads, pending = k_payload(qid), k_pending(qid)
  if max_length ~= '' then  -- a duplicate answers 409 before a full queue 429
    if redis.call('HEXISTS', payloads, jid) == 1 then return 409, 0 end
    local length = redis.call('LLEN', pending)
    if length >= tonumber(max_length) then return 429, length end
  end
  -- the payload is the job's "exists" mark: HSETNX checks and stores at
  -- once, and RPUSH tells the length (calls are what a batch pays for)
  if redis.call('HSETNX', payloads, jid, payload) == 0 then return 409, 0 end
  local length = redis.call('RPUSH', pending, jid) - 1
  redis.call('HSET', k_budget(qid), jid, limit)
  local meta = k_meta(qid)
  local m = redis.call('HMGET', meta, 'override', 'interval')
  if interval == '' then
    interval = m[2] or '0'
  elseif m[1] == '1' then
    interval = m[2]  -- set with /interval/: it sticks (R6)
  end
  local changed = interval ~= m[2]
  if changed then redis.call('HSET', meta, 'interval', interval) end
  -- a queue with pending jobs is known, has no expiry and keeps its ready
  -- time unless its interval changed: only then is there more to do
  if length == 0 then
    redis.call('PERSIST', meta)
    redis.call('SADD', K_QUEUES, qid)
    redis.call('HSET', meta, 'since', NOW)
  end
  if length == 0 or changed then set_ready(qid, ready_at(meta)) end
  return 201, length + 1
end

-- Take the head job of the earliest ready queue (dequeue.lua, batches).
-- The loop only repeats past a ready entry left without jobs (never in a
-- consistent store); it is bounded so a damaged store cannot block Redis.
-- Returns nil, or queue_id, job_id, payload, requeues_remaining, pending left.
-- The dequeue is counted in tally (see count_tally).
local function take_one(lease, tally)
  for _ = 1, 10 do
    local head = redis.call('ZRANGEBYSCORE', K_READY, '-inf', NOW, 'LIMIT', 0, 1)
    if #head == 0 then return nil end
    local qid = head[1]
    local pending = k_pending(qid)
    local jid = redis.call('LPOP', pending)
    if not jid then
      redis.call('ZREM', K_READY, qid)
    else
      local meta = k_meta(qid)
      -- a "hold" left from a queue that disappeared is now in the past
      -- (this dequeue waited for it), so it no longer counts: no HDEL
      redis.call('HSET', meta, 'last', NOW)
      local left = redis.call('LLEN', pending)
      if left > 0 then
        redis.call('ZADD', K_READY, ready_at(meta), qid)
      else
        redis.call('ZREM', K_READY, qid)
        redis.call('HDEL', meta, 'since')
      end
      redis.call('SADD', k_active(qid), jid)
      redis.call('ZADD', K_DEADLINES, NOW + lease, qid .. ':' .. jid)
      tally[qid] = (tally[qid] or 0) + 1
      local payload = redis.call('HGET', k_payload(qid), jid)
      local budget = redis.call('HGET', k_budget(qid), jid)
      return qid, jid, payload, budget, left
    end
  end
  return nil
end

-- Finish an active job (finish.lua, batches).  Returns 1, or 0 when the
-- job is not active.
local function finish_job(qid, jid)
  if redis.call('ZREM', K_DEADLINES, qid .. ':' .. jid) == 0 then return 0 end
  redis.call('SREM', k_active(qid), jid)
  redis.call('HDEL', k_payload(qid), jid)
  redis.call('HDEL', k_budget(qid), jid)
  redis.call('HDEL', k_limit(qid), jid)
  forget_if_empty(qid)
  return 1
end
