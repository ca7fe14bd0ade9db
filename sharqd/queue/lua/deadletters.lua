-- The dead letters of a type (see requeue.lua), newest first.
-- ARGV[5] "list", [6] offset, [7] limit: {total, entry...} (entries are JSON)
-- ARGV[5] "retry", [6] queue_id, [7] job_id: {201, pending length} put back
--   with its original requeue limit | {404} not a dead letter | {409} the
--   job id is pending or active again
-- ARGV[5] "delete", [6] queue_id, [7] job_id: 1 deleted, 0 not a dead letter
-- ARGV[5] "purge": number deleted
local op = ARGV[5]
if op == 'list' then
  local offset, limit = tonumber(ARGV[6]), tonumber(ARGV[7])
  local total = redis.call('ZCARD', K_DEAD)
  local members = redis.call('ZREVRANGE', K_DEAD, offset, offset + limit - 1)
  local reply = {total}
  if #members > 0 then
    for _, entry in ipairs(redis.call('HMGET', K_DEAD_JOBS, unpack(members))) do
      if entry then table.insert(reply, entry) end
    end
  end
  return reply
elseif op == 'retry' then
  local qid, jid = ARGV[6], ARGV[7]
  local member = qid .. ':' .. jid
  local entry = redis.call('HGET', K_DEAD_JOBS, member)
  if not entry then return {404} end
  if redis.call('HEXISTS', k_jobs(qid), jid) == 1 then return {409} end
  -- every field before the payload is ours: numbers and identifiers
  local at = string.find(entry, ',"payload":', 1, true)
  local payload = string.sub(entry, at + 11, -2)
  local limit = string.match(entry, '"requeue_limit":(%-?%d+)')
  local interval = ''
  if not redis.call('HGET', k_meta(qid), 'interval') then
    interval = string.match(entry, '"interval":(%d+)')
  end
  local code, length = enqueue_job(qid, jid, interval, payload, limit, '')
  if code == 201 then add_total('retried', 1) end  -- pending again (stats.lua)
  redis.call('ZREM', K_DEAD, member)
  redis.call('HDEL', K_DEAD_JOBS, member)
  notify_ready()
  return {code, length}
elseif op == 'delete' then
  local member = ARGV[6] .. ':' .. ARGV[7]
  if redis.call('ZREM', K_DEAD, member) == 0 then return 0 end
  redis.call('HDEL', K_DEAD_JOBS, member)
  return 1
else
  local total = redis.call('ZCARD', K_DEAD)
  redis.call('DEL', K_DEAD, K_DEAD_JOBS, K_DEAD_SEQ)
  return total
end
