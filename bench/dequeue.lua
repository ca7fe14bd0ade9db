-- wrk script: GET /dequeue/<type>/.  200s are jobs; 404s (nothing ready) are
-- counted apart from real errors.
-- wrk ... -s dequeue.lua URL -- <queue_type>
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "wrk_common.lua")

function init(args)
  qtype = args[1] or "bench"
  init_counters()
  req = wrk.format("GET", "/dequeue/" .. qtype .. "/")
end

function request()
  return req
end

function response(status, headers, body)
  if status == 200 then
    n2xx = n2xx + 1
  elseif status == 404 then
    n404 = n404 + 1
  else
    unexpected(status, body)
  end
end
