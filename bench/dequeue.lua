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
  count_answer(status, body, 200)
end
