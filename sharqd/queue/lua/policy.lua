-- Rate policies (README "Rate policy").  ARGV[5] the operation, [6]
-- queue_id, or "" for the type's default policy:
-- "get": {rate, burst, max_active, paused} ("" when not set), or nil when
--   there is no such policy
-- "put", [7] rate, [8] burst, [9] max_active, [10] paused, each "" when
--   not given (kept as it is) or "-" for null (removed): changes the
--   policy (creating it); returns the policy as "get" does, or -1 (nothing
--   changed) when it would have a burst without a rate
-- "delete": returns 1, or 0 when there was no such policy
-- "sweep", [7] SSCAN cursor, [8] count: puts up to about count queues of
--   the type in their place (after the type's default changed); returns
--   the next cursor ("0" when done)
-- "pause" / "resume" (the whole type): returns 1, or 0 when it was already so
-- A queue's policy lives in its meta hash (read with the rest in one call);
-- it takes effect at once: the queue's place in the ready set is
-- recomputed and long-poll waiters are woken when it became ready.
local op, qid = ARGV[5], ARGV[6]
local FIELDS = {'rate', 'burst', 'max_active', 'paused'}
local key, mark = K_TYPE_POLICY, 'set'
if qid ~= '' then key, mark = k_meta(qid), 'p' end

local function stored()
  local f = redis.call('HMGET', key, mark, unpack(FIELDS))
  if not f[1] then return nil end
  local reply = {}
  for i = 2, 5 do reply[i - 1] = f[i] or '' end
  return reply
end

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
  return stored()
elseif op == 'put' then
  local now = stored() or {'', '', '', ''}
  for i = 1, 4 do
    local given = ARGV[6 + i]
    if given == '-' then now[i] = '' elseif given ~= '' then now[i] = given end
  end
  if now[2] ~= '' and now[1] == '' then return -1 end
  local set, unset = {mark, '1'}, {}
  for i, name in ipairs(FIELDS) do
    if now[i] == '' then
      unset[#unset + 1] = name
    else
      set[#set + 1], set[#set + 2] = name, now[i]
    end
  end
  if #unset > 0 then redis.call('HDEL', key, unpack(unset)) end
  redis.call('HSET', key, unpack(set))
  if qid ~= '' then redis.call('PERSIST', key) end
  replace_queue()
  return now
elseif op == 'delete' then
  local existed = redis.call('HDEL', key, mark, unpack(FIELDS)) > 0
  if existed then replace_queue() end
  return existed and 1 or 0
elseif op == 'sweep' then
  local scan = redis.call('SSCAN', K_QUEUES, ARGV[7], 'COUNT', ARGV[8])
  for _, id in ipairs(scan[2]) do
    if redis.call('LLEN', k_pending(id)) > 0 then place(id) end
  end
  notify_ready()
  return scan[1]
elseif op == 'pause' then
  return redis.call('HSET', K_TYPE_POLICY, 'type_paused', '1')
else
  if redis.call('HDEL', K_TYPE_POLICY, 'type_paused') == 0 then return 0 end
  -- waiters kept waiting while the type was paused: wake them
  redis.call('PUBLISH', CHANNEL, NOW_TEXT)
  return 1
end
