-- The requeue lock.  KEYS[1] lock key; ARGV[1] "acquire" | "release",
-- [2] owner token, [3] ttl ms.  Returns 1 when the caller holds (held) it.
local key, token = KEYS[1], ARGV[2]
if ARGV[1] == 'acquire' then
  if redis.call('SET', key, token, 'NX', 'PX', ARGV[3]) then return 1 end
  if redis.call('GET', key) == token then
    redis.call('PEXPIRE', key, ARGV[3])
    return 1
  end
  return 0
end
if redis.call('GET', key) == token then
  redis.call('DEL', key)
  return 1
end
return 0
