-- wrk script: POST /enqueue/<type>/<queue>/ with a job id unique per request
-- (run tag + thread number + per-thread counter), spread over N queues.
-- wrk ... -s enqueue.lua URL -- <queue_type> <queues> <run_tag>
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  qtype = args[1] or "bench"
  nqueues = tonumber(args[2]) or 1000
  tag = args[3] or "r"
  counter = 0
  n2xx, n404, nother, nbad = 0, 0, 0, 0
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
  if status == 201 then
    n2xx = n2xx + 1
  elseif status == 404 then
    n404 = n404 + 1
  else
    nother = nother + 1
    if nbad < 3 then
      nbad = nbad + 1
      io.stderr:write("unexpected " .. status .. ": " .. tostring(body):sub(1, 200) .. "\n")
    end
  end
end

function done(summary, latency, requests)
  local t = {ok = 0, n404 = 0, other = 0}
  for _, th in ipairs(threads) do
    t.ok = t.ok + th:get("n2xx")
    t.n404 = t.n404 + th:get("n404")
    t.other = t.other + th:get("nother")
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"duration_us":%d,"requests":%d,"ok":%d,"n404":%d,"other_status":%d,' ..
    '"finished":0,"finish404":0,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.duration, summary.requests, t.ok, t.n404, t.other, e.connect, e.read,
    e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99),
    latency.max, latency.mean))
end
