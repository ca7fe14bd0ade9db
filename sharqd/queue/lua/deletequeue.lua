-- ARGV[5] queue_id, [6] "1" to purge active jobs and the interval override.
-- Returns 1, or 0 for no such queue.
local qid = ARGV[5]
if redis.call('SISMEMBER', K_QUEUES, qid) == 0 then return 0 end
local meta, pending, jobs = k_meta(qid), k_pending(qid), k_jobs(qid)

-- HDEL the given job fields, a bounded number of arguments at a time
local function drop(fields)
  for i = 1, #fields, 1000 do
    redis.call('HDEL', jobs, unpack(fields, i, math.min(i + 999, #fields)))
  end
end

local fields = {}
for _, text in ipairs(redis.call('LRANGE', pending, 0, -1)) do
  fields[#fields + 1] = string.sub(text, 1, string.find(text, ' ', 1, true) - 1)
end
drop(fields)
add_total('deleted', #fields)  -- pending no more (stats.lua)
redis.call('DEL', pending)
unplace(qid)
redis.call('HDEL', meta, 'since')
if ARGV[6] == '1' then
  -- the jobs left are the active ones (the pending ones are gone)
  local all, active = redis.call('HGETALL', jobs), {}
  for i = 1, #all, 2 do
    if all[i + 1] ~= '' then
      active[#active + 1] = all[i]
      redis.call('ZREM', K_DEADLINES, qid .. ':' .. all[i])
      local _, id = cut(all[i + 1])
      redis.call('XDEL', K_ACTIVE_JOBS, id)
    end
  end
  drop(active)
  redis.call('HDEL', meta, 'override', 'active')
end
forget_if_empty(qid)
return 1
