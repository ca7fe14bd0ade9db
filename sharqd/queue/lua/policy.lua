-- Rate policies (README "Rate policy").  ARGV[5] the operation, [6]
-- queue_id, or "" for the type's default policy:
-- "get": {rate, burst, max_active, paused} ("" when not set), or nil when
--   there is no such policy
-- "put", [7] rate, [8] burst, [9] max_active, [10] paused ("" when not
--   given): replaces the policy; returns 1
-- "delete": returns 1, or 0 when there was no such policy
-- "sweep", [7] SSCAN cursor, [8] count: puts up to about count queues of
--   the type that follow the type's default policy in their place (after
--   the default changed); returns the next cursor ("0" when done)
-- "pause" / "resume" (the whole type): returns 1, or 0 when it was already so
-- A queue's policy lives in its meta hash (read with the rest in one call);
-- it takes effect at once: the queue's place in the ready set is
-- recomputed and long-poll waiters are woken when it became ready.
local op, qid = ARGV[5], ARGV[6]
local FIELDS = {'rate', 'burst', 'max_active', 'paused'}
local key, mark = K_TYPE_POLICY, 'set'
if qid ~= '' then key, mark = k_meta(qid), 'p' end

local function replace_queue()
  if qid == '' then return end
  if redis.call('LLEN', k_pending(qid)) > 0 then
    place(qid)
    notify_ready()
  elseif redis.call('SISMEMBER', K_QUEUES, qid) == 0 then
    expire_meta(qid, read_meta(qid))  -- a policy alone keeps it, else as before
  end
end

if op == 'get' then
  local f = redis.call('HMGET', key, mark, unpack(FIELDS))
  if not f[1] then return nil end
  local reply = {}
  for i = 2, 5 do reply[i - 1] = f[i] or '' end
  return reply
elseif op == 'put' then
  redis.call('HDEL', key, unpack(FIELDS))
  local fields = {mark, '1'}
  for i, name in ipairs(FIELDS) do
    if ARGV[6 + i] ~= '' then
      fields[#fields + 1] = name
      fields[#fields + 1] = ARGV[6 + i]
    end
  end
  redis.call('HSET', key, unpack(fields))
  if qid ~= '' then redis.call('PERSIST', key) end
  replace_queue()
  return 1
elseif op == 'delete' then
  local existed = redis.call('HDEL', key, mark, unpack(FIELDS)) > 0
  if existed then replace_queue() end
  return existed and 1 or 0
elseif op == 'sweep' then
  local scan = redis.call('SSCAN', K_QUEUES, ARGV[7], 'COUNT', ARGV[8])
  for _, id in ipairs(scan[2]) do
    if redis.call('LLEN', k_pending(id)) > 0 then
      local m = read_meta(id)
      if not m.own then place(id, m) end
    end
  end
  notify_ready()
  return scan[1]
elseif op == 'pause' then
  return redis.call('HSET', K_TYPE_POLICY, 'type_paused', '1')
else
  if redis.call('HDEL', K_TYPE_POLICY, 'type_paused') == 0 then return 0 end
  -- waiters kept waiting while the type was paused: wake them
  redis.call('PUBLISH', CHANNEL, NOW)
  return 1
end
