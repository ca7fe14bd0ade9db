-- Shared by the wrk scripts (loaded with dofile): thread bookkeeping, the
-- answer counters, and the WRKJSON summary line that run.py reads.
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init_counters()
  n2xx, n404, nother, nbad = 0, 0, 0, 0
  finished, finish404 = 0, 0
end

-- Count one answer: the workload's success status, a plain 404 (nothing
-- ready), or anything else.
function count_answer(status, body, success)
  if status == success then
    n2xx = n2xx + 1
  elseif status == 404 then
    n404 = n404 + 1
  else
    unexpected(status, body)
  end
end

-- An answer that is neither the workload's success nor a plain 404.
function unexpected(status, body)
  nother = nother + 1
  if nbad < 3 then
    nbad = nbad + 1
    io.stderr:write("unexpected " .. status .. ": " .. tostring(body):sub(1, 200) .. "\n")
  end
end

function done(summary, latency, requests)
  local t = {ok = 0, n404 = 0, other = 0, finished = 0, finish404 = 0}
  for _, th in ipairs(threads) do
    t.ok = t.ok + th:get("n2xx")
    t.n404 = t.n404 + th:get("n404")
    t.other = t.other + th:get("nother")
    t.finished = t.finished + th:get("finished")
    t.finish404 = t.finish404 + th:get("finish404")
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"duration_us":%d,"requests":%d,"ok":%d,"n404":%d,"other_status":%d,' ..
    '"finished":%d,"finish404":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.duration, summary.requests, t.ok, t.n404, t.other, t.finished, t.finish404,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50),
    latency:percentile(99), latency.max, latency.mean))
end
