-- ARGV[5] queue_id, [6] job_id, [7] interval ms, [8] payload (JSON text),
-- [9] requeue limit, [10] max queued length or ""
-- Returns {201, pending length} | {409} duplicate | {429, pending length} full
local qid, jid = ARGV[5], ARGV[6]
local payloads = k_payload(qid)
if redis.call('HEXISTS', payloads, jid) == 1 then return {409} end
local pending = k_pending(qid)
local length = redis.call('LLEN', pending)
if ARGV[10] ~= '' and length >= tonumber(ARGV[10]) then return {429, length} end

redis.call('RPUSH', pending, jid)
redis.call('HSET', payloads, jid, ARGV[8])
redis.call('HSET', k_budget(qid), jid, ARGV[9])
local meta = k_meta(qid)
redis.call('PERSIST', meta)
if redis.call('HGET', meta, 'override') ~= '1' then
  redis.call('HSET', meta, 'interval', ARGV[7])
end
if length == 0 then redis.call('HSET', meta, 'since', NOW) end
set_ready(qid, ready_at(meta))
redis.call('SADD', K_QUEUES, qid)
redis.call('SADD', K_TYPES, QTYPE)
count('enqueued', qid)
notify_ready()
return {201, length + 1}
