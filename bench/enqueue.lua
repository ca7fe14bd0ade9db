-- wrk script: POST /enqueue/<type>/<queue>/ with a job id unique per request
-- (run tag + thread number + per-thread counter), spread over N queues.
-- wrk ... -s enqueue.lua URL -- <queue_type> <queues> <run_tag>
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "wrk_common.lua")

function init(args)
  qtype = args[1] or "bench"
  nqueues = tonumber(args[2]) or 1000
  tag = args[3] or "r"
  counter = 0
  init_counters()
  headers = {["Content-Type"] = "application/json"}
end

function request()
  counter = counter + 1
  local q = (counter + tid * 7919) % nqueues
  local body = '{"job_id":"' .. tag .. '-' .. tid .. '-' .. counter ..
               '","interval":0,"payload":{"n":' .. counter .. '}}'
  return wrk.format("POST", "/enqueue/" .. qtype .. "/q" .. q .. "/", headers, body)
end

function response(status, headers, body)
  count_answer(status, body, 201)
end
