-- Why a queue is (not) moving.  ARGV[5] queue_id.
-- Returns {pending, active, source ("queue" | "type" | "interval"), rate,
-- burst, max_active, paused ("1" | "0"), interval, type_paused ("1" |
-- "0"), tokens, next ready time (epoch ms, -1 when none: held or the
-- queue has no state), reason ("" when ready), now, and where rate (with
-- burst), max_active and paused come from: "queue", "type" or ""}
local qid = ARGV[5]
local m = read_meta(qid)
local pol = policy(m)
local pending = redis.call('LLEN', k_pending(qid))
local active = m.active
local at = ready_at(m, pol)
local tokens
if pol.rate then
  tokens = gcra_tokens(m, pol)
else
  tokens = at <= NOW and 1 or 0
end
if at > NOW then tokens = 0 end
local reason = ''
if type_policy().type_paused then
  reason = 'type_paused'
else
  reason = held(m, pol) or ''
  if reason == '' then
    if pending == 0 then
      reason = 'empty'
    elseif at > NOW then
      reason = pol.rate and 'rate' or 'interval'
    end
  end
end
local next_at = at
if reason == 'type_paused' or reason == 'paused' or reason == 'max_active' then next_at = -1 end
-- where each field in force comes from: 'queue', 'type' or '' (set in neither)
local own, t = m.own or {}, type_policy()
local function from(mine, types)
  if mine then return 'queue' end
  return types and 'type' or ''
end
return {pending, active, pol.source, pol.rate_text or '', pol.rate and pol.burst or '',
        pol.max_active or '', pol.paused and '1' or '0', m.interval,
        type_policy().type_paused and '1' or '0', tokens, next_at, reason, NOW,
        from(own.rate, t.rate), from(own.max_active, t.max_active),
        from(own.paused_set, t.paused_set)}
