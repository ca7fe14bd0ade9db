-- ARGV[5] batch size, [6] dead letter limit ("" for 10000).  Puts back up
-- to that many expired jobs of the type; a job whose budget is spent moves
-- to the type's dead letters instead.
-- Returns {requeued, dead, examined, the type's earliest deadline now or -1
-- when it has no active job}: the bound the pass settles in the index of
-- due types (see set_deadline).
local due = redis.call('ZRANGEBYSCORE', K_DEADLINES, '-inf', NOW_TEXT, 'LIMIT', '0', ARGV[5])
local dead_limit = tonumber(ARGV[6]) or 10000
local requeued, discarded = 0, 0
-- latest deadline first, so that the job dequeued first ends at the front
for i = #due, 1, -1 do
  local member = due[i]
  local sep = string.find(member, ':', 1, true)
  local qid, jid = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  redis.call('ZREM', K_DEADLINES, member)
  local meta, jobs = k_meta(qid), k_jobs(qid)
  local value = redis.call('HGET', jobs, jid)
  local job, id
  if value and value ~= '' then job, id = active_job(value) end
  if job then
    redis.call('XDEL', K_ACTIVE_JOBS, id)
    local budget_text, rest = cut(job)
    local limit, payload = cut(rest)
    local budget = tonumber(budget_text)
    redis.call('HINCRBY', meta, 'active', '-1')
    if budget == 0 then
      if dead_limit > 0 then
        local interval = tonumber(redis.call('HGET', meta, 'interval')) or 0
        redis.call('ZADD', K_DEAD, redis.call('INCR', K_DEAD_SEQ), member)
        -- the payload is stored JSON text: spliced in last, never decoded
        redis.call('HSET', K_DEAD_JOBS, member, string.format(
          '{"queue_id":"%s","job_id":"%s","requeue_limit":%d,"requeues_spent":%d,'
          .. '"interval":%d,"failed_at":%d,"reason":"requeue limit spent","payload":',
          qid, jid, limit, limit, interval, NOW) .. payload .. '}')
        local extra = redis.call('ZCARD', K_DEAD) - dead_limit
        if extra > 0 then
          local oldest = redis.call('ZPOPMIN', K_DEAD, extra)
          for j = 1, #oldest, 2 do redis.call('HDEL', K_DEAD_JOBS, oldest[j]) end
        end
      end
      redis.call('HDEL', jobs, jid)
      count('dead', qid)
      -- its slot is free: a queue at its max_active cap may be ready again
      if redis.call('HEXISTS', meta, 'held') == 1 then place(qid) end
      forget_if_empty(qid)
      discarded = discarded + 1
    else
      if budget > 0 then budget = budget - 1 end
      redis.call('HSET', jobs, jid, '')
      local text = jid .. ' ' .. budget .. ' ' .. limit .. ' ' .. payload
      if redis.call('LPUSH', k_pending(qid), text) == 1 then
        redis.call('HSET', meta, 'since', NOW_TEXT)
      end
      place(qid)
      requeued = requeued + 1
    end
  elseif value and value ~= '' then  -- its job is gone (a damaged store)
    redis.call('HDEL', jobs, jid)
    redis.call('HINCRBY', meta, 'active', '-1')
    forget_if_empty(qid)
  end
end
notify_ready()
add_total('requeued', requeued)
add_total('dead_lettered', discarded)
-- the index of due types will hold this bound once the pass settles it,
-- or a lower one (the settle left out because a mark came meanwhile)
local head = redis.call('ZRANGE', K_DEADLINES, '0', '0', 'WITHSCORES')
if #head == 0 then
  redis.call('DEL', K_INDEXED)
  -- no active job: the stream holds at most its placeholder (add_active)
  -- and deleted entries; it goes, and starts afresh at the next dequeue
  local left = redis.call('XRANGE', K_ACTIVE_JOBS, '-', '+', 'COUNT', '2')
  if #left == 0 or (#left == 1 and left[1][1] == '0-1') then
    redis.call('DEL', K_ACTIVE_JOBS)
  end
  return {requeued, discarded, #due, -1}
end
redis.call('SET', K_INDEXED, head[2])
return {requeued, discarded, #due, tonumber(head[2])}
