-- Prepended to every queue script (see scripts.py).
-- ARGV[1] key base of the queue type, "<prefix>:{<queue_type>}"
-- ARGV[2] key prefix for global keys
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
local K_TYPES = GLOBAL .. ':types'        -- set of queue types with pending or active jobs

local function k_pending(qid) return BASE .. ':pending:' .. qid end  -- list of job ids
local function k_active(qid) return BASE .. ':active:' .. qid end    -- set of job ids
local function k_payload(qid) return BASE .. ':payload:' .. qid end  -- hash job id -> payload
local function k_budget(qid) return BASE .. ':budget:' .. qid end    -- hash job id -> requeues left
local function k_meta(qid) return BASE .. ':meta:' .. qid end        -- hash, see below
-- meta fields: interval, override ("1" when set by /interval/), last (last
-- dequeue), since (when pending became non-empty), hold (earliest next
-- dequeue kept from a queue that disappeared)

-- A dead queue's last dequeue is kept at least this long (R1, R6).
local KEEP_LAST_MS = 3600000

local function count(kind, qid)
  local g = GLOBAL .. ':stats:' .. MINUTE
  local q = BASE .. ':stats:' .. qid .. ':' .. MINUTE
  redis.call('HINCRBY', g, kind, 1)
  redis.call('PEXPIRE', g, 660000)
  redis.call('HINCRBY', q, kind, 1)
  redis.call('PEXPIRE', q, 660000)
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
  if redis.call('SCARD', K_QUEUES) == 0 then redis.call('SREM', K_TYPES, QTYPE) end
  redis.call('DEL', k_payload(qid), k_budget(qid))
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
