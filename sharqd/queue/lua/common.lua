-- Prepended to every queue script (see operations.py, load_script).
-- ARGV[1] key base of the queue type, "<prefix>:{<queue_type>}"
-- ARGV[2] key prefix (the scripts touch no key outside the type's slot)
-- ARGV[3] queue type
-- ARGV[4] now in epoch ms, or "" to use the Redis server's clock
-- ARGV[5..] arguments of the operation
local BASE, GLOBAL, QTYPE = ARGV[1], ARGV[2], ARGV[3]

-- The time in epoch ms as text, from TIME's seconds and microseconds
-- without arithmetic: what is stored or sent as the time (since, last,
-- lease ids, ...) is this text.  A Lua number becomes text through
-- sprintf ("%.14g" in Lua, "%.17g" when passed to redis.call): 2,000 to
-- 4,000 instructions each, a third of a small command.
local function redis_now()
  local t = redis.call('TIME')
  local ms = string.sub(t[2], 1, -4)  -- whole milliseconds, 0 to 3 digits
  return t[1] .. string.sub('00' .. (ms == '' and '0' or ms), -3)
end
local NOW_TEXT = ARGV[4] ~= '' and ARGV[4] or redis_now()
local NOW = tonumber(NOW_TEXT)
local MINUTE = NOW - NOW % 60000
local MINUTE_TEXT = string.format('%d', MINUTE)

-- A whole number as text for redis.call: cheaper than the "%.17g" Redis
-- formats a number argument with, and nothing for 1, the usual count.
local function digits(n)
  if n == 1 then return '1' end
  return string.format('%d', n)
end

-- keys of the queue type (all share the hash tag of BASE)
local K_READY = BASE .. ':ready'          -- zset queue_id -> ready time (queues with pending jobs)
local K_DEADLINES = BASE .. ':deadlines'  -- zset "queue_id:job_id" -> deadline (active jobs)
local K_QUEUES = BASE .. ':queues'        -- set of queue ids with pending or active jobs
local K_TOTALS = BASE .. ':totals'        -- hash kind -> events of the type since it began

-- Add n events of a kind to the type's totals (GET /prometheus): one
-- HINCRBY, in the type's own hash slot.
local function add_total(kind, n)
  if n > 0 then redis.call('HINCRBY', K_TOTALS, kind, digits(n)) end
end

-- Count n events of a kind for all queues of the type together, in this
-- minute's counters (GET /metrics/ adds up the types: each type counts in
-- its own slot); a counter's expiry is set when its minute starts (the
-- increment that made it n), not on every event.
local function count_all(kind, n)
  local g = BASE .. ':counts:' .. MINUTE_TEXT
  if redis.call('HINCRBY', g, kind, digits(n)) == n then redis.call('PEXPIRE', g, '660000') end
end

-- The totals of a batch enqueue's answer {code, length, ...}.
local function add_enqueue_totals(reply)
  local stored, duplicate, full = 0, 0, 0
  for k = 1, #reply, 2 do
    local code = reply[k]
    if code == 201 then stored = stored + 1
    elseif code == 409 then duplicate = duplicate + 1
    else full = full + 1 end
  end
  add_total('enqueued', stored)
  add_total('rejected_duplicate', duplicate)
  add_total('rejected_max_queued_length', full)
end

-- Three keys per queue and one per type for the jobs (docs/redis-layout.md):
-- pending:<qid>  list of the pending jobs, in order, each as
--                "<job id> <job>"
-- jobs:<qid>     hash job id -> "" while pending, "<lease id> <entry id>"
--                while active: the duplicate check (R8), and short values
--                only, so it stays a compact listpack up to 128 jobs
-- meta:<qid>     hash of the queue's own fields (below): apart from the
--                jobs, so that reading them scans a few fields, not a
--                listpack of every job
-- activejobs     stream (of the type): an active job's "<job>", under the
--                entry id its field names.  A stream packs its entries
--                (a hash would spend ~60 bytes more per job on a payload
--                too long for a compact hash).
-- A job is "<requeues left> <requeue limit> <payload>": payloads are
-- spliced in and cut out as text, never decoded.
local function k_pending(qid) return BASE .. ':pending:' .. qid end
local function k_meta(qid) return BASE .. ':meta:' .. qid end
local function k_jobs(qid) return BASE .. ':jobs:' .. qid end
local K_ACTIVE_JOBS = BASE .. ':activejobs'

-- Store an active job's "<job>" in the stream; returns its entry id.  A
-- new stream starts with a placeholder entry, id 0-1, that no job ever
-- has: jobs finish about in the order they were handed out, so without
-- it XDEL would delete the stream's first entry nearly every time, and
-- Redis then walks over every deleted entry of the first node (up to 100)
-- to find the new first one: a third of a finish's Redis time.  The
-- requeue pass drops the stream when the type has no active job (see
-- requeue.lua), so the placeholder's node does not outlive the activity.
local function add_active(job)
  local id = redis.call('XADD', K_ACTIVE_JOBS, 'NOMKSTREAM', '*', 'j', job)
  if id then return id end
  redis.call('XADD', K_ACTIVE_JOBS, '0-1', 'j', '')
  return redis.call('XADD', K_ACTIVE_JOBS, '*', 'j', job)
end

-- "<word> <rest>" -> word, rest
local function cut(text)
  local i = string.find(text, ' ', 1, true)
  return string.sub(text, 1, i - 1), string.sub(text, i + 1)
end

-- An active job's value in its jobs hash -> the job (nil when its entry
-- is gone: a damaged store) and the entry id.
local function active_job(value)
  local _, id = cut(value)
  local entry = redis.call('XRANGE', K_ACTIVE_JOBS, id, id)[1]
  return entry and entry[2][2], id
end
local K_TYPE_POLICY = BASE .. ':typepolicy'  -- hash, the type's default policy and type_paused
-- meta fields: interval, override ("1" when set by /interval/), last (last
-- dequeue), since (when pending became non-empty), hold (earliest next
-- dequeue kept from a queue that disappeared), anchor, n, grate (the GCRA
-- state under a rate policy, see gcra_state), held ("1" while it has
-- pending jobs but is out of the ready set: paused or at its cap), and the
-- queue's own policy: p ("1" when it has one), rate, burst, max_active,
-- paused; active (number of active jobs); c0..c9 (counts, see
-- count_queue).  A meta with a policy does not expire.

-- A dead queue's last dequeue is kept at least this long (R1, R6).
local KEEP_LAST_MS = 3600000

-- A queue's counts of the last ten minutes live in its meta hash, in a
-- ring of ten fields c0..c9 (one per minute, by minute number mod 10), each
-- "<minute> <enqueued> <dequeued> <dead>": a slot whose minute is not the
-- current one is stale and starts again from 0.  So a queue costs at most
-- ten small fields, from its first event on, and no key per minute.
-- SLOT_SEEN[qid] holds this minute's slot as read along with other fields
-- (false: not there), so that counting costs no read of its own.
local SLOT = 'c' .. string.char(48 + (MINUTE / 60000) % 10)  -- "c0" .. "c9"
local SLOT_SEEN = {}

-- This minute's slot of a queue's counts with n more events of a kind
-- (enqueued, dequeued, dead): the text to store under SLOT.  Only the
-- count that moves is turned into a number and back.
local function next_slot(qid, kind, n)
  local slot = SLOT_SEEN[qid]
  if slot == nil then slot = redis.call('HGET', k_meta(qid), SLOT) end
  local e, d, x = '0', '0', '0'
  if slot then
    local at, se, sd, sx = string.match(slot, '^(%d+) (%d+) (%d+) (%d+)$')
    if at == MINUTE_TEXT then e, d, x = se, sd, sx end
  end
  if kind == 'enqueued' then
    e = digits(tonumber(e) + n)
  elseif kind == 'dequeued' then
    d = digits(tonumber(d) + n)
  else
    x = digits(tonumber(x) + n)
  end
  slot = MINUTE_TEXT .. ' ' .. e .. ' ' .. d .. ' ' .. x
  SLOT_SEEN[qid] = slot
  return slot
end

local function count_queue(qid, kind, n)
  redis.call('HSET', k_meta(qid), SLOT, next_slot(qid, kind, n))
end

-- Count events of a kind (enqueued, dequeued, dead) per queue (tally[qid]
-- = n) and for the type (count_all).  Batches add up their tally first,
-- so one call counts them all.
local function count_tally(kind, tally)
  local total = 0
  for qid, n in pairs(tally) do
    count_queue(qid, kind, n)
    total = total + n
  end
  if total > 0 then count_all(kind, total) end
end

-- Count one event of a kind for a queue.
local function count(kind, qid)
  count_queue(qid, kind, 1)
  count_all(kind, 1)
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
    local head = redis.call('ZRANGE', K_READY, '0', '0', 'WITHSCORES')
    if #head == 0 or at < tonumber(head[2]) then LOWERED = true end
  end
  redis.call('ZADD', K_READY, digits(at), qid)
end

local function notify_ready()
  if LOWERED then redis.call('PUBLISH', CHANNEL, NOW_TEXT) end
end

-- ---- rate policies (README "Rate policy")

-- Float noise far below a millisecond must not move a ready time by one.
local EPS = 1e-6

-- f[i..i+4]: set, rate, burst, max_active, paused
local function as_policy(f, i, source)
  return {source = source, rate = tonumber(f[i + 1]), rate_text = f[i + 1],
          burst = tonumber(f[i + 2]) or 1, max_active = tonumber(f[i + 3]),
          paused = f[i + 4] == '1', paused_set = f[i + 4] ~= false}
end

-- Read once per call; the fields of a default policy only when the type
-- has one (each field of an HMGET's reply costs Redis about 1,000
-- instructions to hand to Lua, and most types have none).
local TYPE_POLICY
local function type_policy()
  if not TYPE_POLICY then
    local f = redis.call('HMGET', K_TYPE_POLICY, 'set', 'type_paused')
    if f[1] then
      TYPE_POLICY = as_policy(redis.call('HMGET', K_TYPE_POLICY, 'set', 'rate', 'burst',
                                         'max_active', 'paused'), 1, 'type')
    else
      TYPE_POLICY = {source = 'interval', burst = 1, paused = false, paused_set = false}
    end
    TYPE_POLICY.type_paused = f[2] == '1'
  end
  return TYPE_POLICY
end

-- A queue's meta fields.  The GCRA state (marked by anchor) and the
-- queue's own policy (marked by p) are read only when their mark is
-- there: a field an HMGET asks for and the hash lacks costs a scan of the
-- whole hash, and most queues have neither.
local function read_meta(qid)
  local meta = k_meta(qid)
  local m = redis.call('HMGET', meta, 'interval', 'last', 'since', 'hold', 'held', 'active',
                       SLOT, 'p', 'anchor')
  SLOT_SEEN[qid] = m[7]
  local r = {interval = tonumber(m[1]) or 0, last = tonumber(m[2]), since = tonumber(m[3]),
             hold = tonumber(m[4]), held = m[5], active = math.max(0, tonumber(m[6]) or 0)}
  if m[8] then
    r.own = as_policy(redis.call('HMGET', meta, 'p', 'rate', 'burst', 'max_active', 'paused'),
                      1, 'queue')
  end
  if m[9] then
    local g = redis.call('HMGET', meta, 'n', 'grate')
    r.anchor, r.n, r.grate = tonumber(m[9]), tonumber(g[1]), tonumber(g[2])
  end
  return r
end

-- The policy in force for a queue (m from read_meta), field by field: the
-- queue's own, else its type's default (rate and burst go together); a
-- field set in neither has no effect (the interval spaces the queue).
-- source: 'queue' when the queue has a policy of its own, else 'type' when
-- the type has a default, else 'interval'.
local function policy(m)
  local own, t = m.own, type_policy()
  if not own then return t end
  local p = {source = 'queue', rate = t.rate, rate_text = t.rate_text, burst = t.burst,
             max_active = own.max_active or t.max_active, paused = t.paused}
  if own.rate then p.rate, p.rate_text, p.burst = own.rate, own.rate_text, own.burst end
  if own.paused_set then p.paused = own.paused end
  return p
end

-- GCRA state: the theoretical arrival time (TAT) is anchor + n * 1000 / rate,
-- computed afresh from whole numbers each time, so that no rounding error
-- builds up over a backlog (a rate of 3/s gives exactly 3 jobs a second).
-- A queue last dequeued under the interval starts from that dequeue as if
-- it had been one at this rate (an interval of 250 ms = rate 4, burst 1);
-- after a change of rate the TAT reached under the old one is kept.
-- Returns nil for a queue never dequeued: its bucket is full.
local function gcra_state(m, rate)
  if m.anchor then
    if m.grate == rate then return m.anchor, m.n end
    return math.ceil(m.anchor + m.n * 1000 / m.grate - EPS), 0
  end
  if m.last then return m.last, 1 end
  return nil
end

-- When the bucket lets the next job go: TAT - (burst - 1) / rate.
local function gcra_ready(m, pol)
  local anchor, n = gcra_state(m, pol.rate)
  if not anchor then return -math.huge end
  return anchor + math.ceil((n - pol.burst + 1) * 1000 / pol.rate - EPS)
end

-- How many jobs the bucket lets go back to back now (0 to burst).
local function gcra_tokens(m, pol)
  local anchor, n = gcra_state(m, pol.rate)
  if not anchor then return pol.burst end
  local k = math.floor((NOW - anchor) * pol.rate / 1000 - n + pol.burst + EPS)
  return math.max(0, math.min(pol.burst, k))
end

-- One job goes now: the TAT moves on by 1 / rate (from now when it was past).
local function gcra_take(meta, m, pol)
  local anchor, n = gcra_state(m, pol.rate)
  if not anchor or NOW - anchor >= n * 1000 / pol.rate - EPS then anchor, n = NOW, 0 end
  m.anchor, m.n, m.grate = anchor, n + 1, pol.rate
  redis.call('HSET', meta, 'anchor', anchor, 'n', n + 1, 'grate', pol.rate_text)
end

-- The time a queue's next job may go as far as its rate (or interval)
-- allows: max(since, rate or interval limit, hold).
local function ready_at(m, pol)
  local at = m.since or NOW
  if pol.rate then
    at = math.max(at, gcra_ready(m, pol))
  elseif m.last then
    at = math.max(at, m.last + m.interval)
  end
  if m.hold then at = math.max(at, m.hold) end
  return at
end

-- Why a queue hands out nothing whatever the time: 'paused', 'max_active'
-- (as many jobs active as its cap), or nil.
local function held(m, pol)
  if pol.paused then return 'paused' end
  if pol.max_active and m.active >= pol.max_active then
    return 'max_active'
  end
  return nil
end

-- Put a queue with pending jobs in the ready set at the time its policy
-- lets the next one go, or out of it while it is held (marked "held" in
-- its meta): only dequeueable queues are in the ready set, so a dequeue
-- stays O(log n) (R3).  The finish, requeue and policy paths put a held
-- queue back.  quiet: after a dequeue of the queue, whose ready time can
-- only move later, so nobody needs waking.
local function place(qid, m, quiet)
  m = m or read_meta(qid)
  local pol = policy(m)
  if held(m, pol) then
    redis.call('ZREM', K_READY, qid)
    if not m.held then redis.call('HSET', k_meta(qid), 'held', '1') end
    m.held = '1'
    return
  end
  if m.held then redis.call('HDEL', k_meta(qid), 'held') end
  m.held = nil
  if quiet then
    redis.call('ZADD', K_READY, digits(ready_at(m, pol)), qid)
  else
    set_ready(qid, ready_at(m, pol))
  end
end

-- A queue's pending jobs are gone: out of the ready set, not held.
local function unplace(qid)
  redis.call('ZREM', K_READY, qid)
  redis.call('HDEL', k_meta(qid), 'held')
end

-- The meta of a queue that is gone: kept while it holds a policy, else
-- for as long as its last dequeue matters (R1, R6), or dropped.
local function expire_meta(qid, m)
  local meta = k_meta(qid)
  SLOT_SEEN[qid] = nil
  if not m.last then
    if m.own then
      redis.call('HDEL', meta, 'interval', 'override', 'since', 'held', 'active')
    else
      redis.call('DEL', meta)
    end
    return
  end
  local pol = policy(m)
  local hold = m.last + m.interval
  if pol.rate then hold = gcra_ready(m, pol) end
  redis.call('HDEL', meta, 'override', 'since', 'held', 'active')
  redis.call('HSET', meta, 'hold', digits(hold))
  if m.own then return end
  local keep = math.max(hold - NOW, KEEP_LAST_MS)
  if m.anchor then  -- keep the TAT as long as it matters
    keep = math.max(keep, math.ceil(m.anchor + m.n * 1000 / m.grate) - NOW)
  end
  redis.call('PEXPIRE', meta, digits(keep))
end

-- Drop a queue that has neither pending nor active jobs.  Its interval
-- override ends; its last dequeue (and rate state) stays so R1 holds if it
-- comes back; its policy stays.
local function forget_if_empty(qid)
  local m = read_meta(qid)
  if m.active > 0 or redis.call('LLEN', k_pending(qid)) > 0 then return end
  redis.call('SREM', K_QUEUES, qid)
  expire_meta(qid, m)
end

-- Milliseconds until the type's earliest ready queue is ready, or -1 when
-- the type has no pending job.
local function next_ready_in()
  local head = redis.call('ZRANGE', K_READY, '0', '0', 'WITHSCORES')
  if #head == 0 then return -1 end
  return math.max(0, tonumber(head[2]) - NOW)
end

-- Store one job (enqueue.lua, a dead letter put back).  interval "" keeps
-- the queue's interval if it has one.  Does not count.
-- Returns 201 | 409 | 429 and the pending length after (before for 429).
local function enqueue_job(qid, jid, interval, payload, limit, max_length)
  local meta, pending, jobs = k_meta(qid), k_pending(qid), k_jobs(qid)
  if max_length ~= '' then  -- a duplicate answers 409 before a full queue 429
    if redis.call('HEXISTS', jobs, jid) == 1 then return 409, 0 end
    local length = redis.call('LLEN', pending)
    if length >= tonumber(max_length) then return 429, length end
  end
  -- the job field is the job's "exists" mark: HSETNX checks and stores at
  -- once, and RPUSH tells the length (calls are what a batch pays for)
  if redis.call('HSETNX', jobs, jid, '') == 0 then return 409, 0 end
  local length = redis.call('RPUSH', pending,
                            jid .. ' ' .. limit .. ' ' .. limit .. ' ' .. payload) - 1
  -- override is read only when the interval given is not the queue's (an
  -- override is never without its interval): a field the hash lacks (the
  -- usual case) costs a scan of the whole hash
  local m = redis.call('HMGET', meta, 'interval', SLOT)
  local stored = m[1]
  SLOT_SEEN[qid] = m[2]
  if interval == '' then
    interval = stored or '0'
  elseif stored and interval ~= stored and redis.call('HGET', meta, 'override') == '1' then
    interval = stored  -- set with /interval/: it sticks (R6)
  end
  local changed = interval ~= stored
  if changed then redis.call('HSET', meta, 'interval', interval) end
  -- a queue with pending jobs is known, has no expiry and keeps its ready
  -- time unless its interval changed: only then is there more to do
  if length == 0 then
    redis.call('PERSIST', meta)
    redis.call('SADD', K_QUEUES, qid)
    redis.call('HSETNX', K_TOTALS, 'layout', '2')  -- born in today's layout (migrate.lua)
    redis.call('HSET', meta, 'since', NOW_TEXT)
  end
  if length == 0 or changed then place(qid) end
  return 201, length + 1
end

-- Set an active job's deadline.  sharqd keeps an index of the types with
-- active jobs, type -> a lower bound of its earliest deadline, outside the
-- type's slot (sharqd/queue/requeue.py); K_INDEXED is the bound the index
-- holds (or will, once sharqd has marked it) for this type.  A deadline
-- below it (or with none) is kept in DUE_MARK: the script's reply carries
-- it, and sharqd marks it in the index.  With one lease for all jobs that
-- is only when the type had no active job since its last requeue pass.
local K_INDEXED = BASE .. ':indexed'
local DUE_MARK = false
local INDEXED  -- read once per call
local function set_deadline(member, at)
  redis.call('ZADD', K_DEADLINES, digits(at), member)
  if INDEXED == nil then INDEXED = tonumber(redis.call('GET', K_INDEXED)) or false end
  if INDEXED and at >= INDEXED then return end
  redis.call('SET', K_INDEXED, digits(at))
  INDEXED, DUE_MARK = at, at
end

-- Take the head job of the earliest ready queue (dequeue.lua, batches).
-- The head is checked against its policy first: after a change of the
-- type's default policy a queue may be in the ready set too early (or be
-- held); it is put in its place and the next one looked at.  The loop is
-- bounded so that a damaged store cannot block Redis.
-- Returns nil, or queue_id, job_id, payload, requeues_remaining, pending
-- left, lease id.  The dequeue is counted for the queue, not for the type
-- (count_all: the caller counts its dequeues at once).
local function take_one(lease)
  for _ = 1, 20 do
    local head = redis.call('ZRANGEBYSCORE', K_READY, '-inf', NOW_TEXT, 'LIMIT', '0', '1')
    if #head == 0 then return nil end
    local qid = head[1]
    local m = read_meta(qid)
    local pol = policy(m)
    if held(m, pol) or ready_at(m, pol) > NOW then
      place(qid, m)
    else
      local pending = k_pending(qid)
      local text = redis.call('LPOP', pending)
      if not text then
        redis.call('ZREM', K_READY, qid)
      else
        local jid, job = cut(text)
        local budget, payload = string.match(job, '^(%S+) %S+ (.*)$')
        local meta = k_meta(qid)
        if pol.rate then
          gcra_take(meta, m, pol)
        elseif m.anchor then  -- back to the interval: the bucket is forgotten
          redis.call('HDEL', meta, 'anchor', 'n', 'grate')
          m.anchor = nil
        end
        -- a job is handed out at most once a millisecond (a lease is at
        -- least 1 ms): the time names the hand-out
        local lease_id = NOW_TEXT
        -- a "hold" left from a queue that disappeared is now in the past
        -- (this dequeue waited for it), so it no longer counts: no HDEL
        m.last, m.active = NOW, m.active + 1
        local id = add_active(job)
        -- the queue's count of dequeues goes with the same HSET
        redis.call('HSET', meta, 'last', NOW_TEXT, 'active', digits(m.active),
                   SLOT, next_slot(qid, 'dequeued', 1))
        redis.call('HSET', k_jobs(qid), jid, lease_id .. ' ' .. id)
        local left = redis.call('LLEN', pending)
        if left > 0 then
          place(qid, m, true)
        else
          redis.call('ZREM', K_READY, qid)
          redis.call('HDEL', meta, 'since')
        end
        set_deadline(qid .. ':' .. jid, NOW + lease)
        return qid, jid, payload, budget, left, lease_id
      end
    end
  end
  return nil
end

-- Is the job active, and lease_id ("" when not given) its current lease?
-- Returns 1 yes (or not given), 0 the job is not active, 2 another lease;
-- then the job's value (see k_meta) when it is active.
local function check_lease(qid, jid, lease_id)
  local value = redis.call('HGET', k_jobs(qid), jid)
  if not value or value == '' then return 0 end
  if lease_id ~= nil and lease_id ~= ''
      and string.sub(value, 1, #lease_id + 1) ~= lease_id .. ' ' then
    return 2, value
  end
  return 1, value
end

-- Finish an active job (finish.lua, batches); a queue at its max_active
-- cap becomes ready again.  Returns 1, 0 when the job is not active, 2
-- when lease_id is not its current lease.
local function finish_job(qid, jid, lease_id)
  local ok, value = check_lease(qid, jid, lease_id)
  if ok ~= 1 then return ok end
  redis.call('ZREM', K_DEADLINES, qid .. ':' .. jid)
  local _, id = cut(value)
  redis.call('XDEL', K_ACTIVE_JOBS, id)
  local meta = k_meta(qid)
  redis.call('HDEL', k_jobs(qid), jid)
  local active = redis.call('HINCRBY', meta, 'active', '-1')
  if redis.call('HEXISTS', meta, 'held') == 1 then place(qid) end
  if active <= 0 then forget_if_empty(qid) end
  return 1
end
