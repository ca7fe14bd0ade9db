-- Drop a type from the registry unless it was registered again meanwhile.
-- KEYS[1] the registry (zset type -> epoch s of its last registration);
-- ARGV[1] the type, [2] the cutoff (epoch s).  Returns 1 when dropped.
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if at and tonumber(at) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
