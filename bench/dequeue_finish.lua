-- wrk script: dequeue, then finish each job dequeued.  A dequeue's 200 answer
-- is parsed for queue_id/job_id and the pair goes into this thread's FIFO;
-- the next request of any connection of the thread finishes the oldest one,
-- else dequeues again.  jobs/s = finishes (200 to a finish) per second.
-- wrk ... -s dequeue_finish.lua URL -- <queue_type>
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  qtype = args[1] or "bench"
  n2xx, n404, nother, nbad = 0, 0, 0, 0
  dequeued, finished, finish404 = 0, 0, 0
  fifo, head, tail = {}, 1, 0
  deq = wrk.format("GET", "/dequeue/" .. qtype .. "/")
end

function request()
  if head <= tail then
    local job = fifo[head]
    fifo[head] = nil
    head = head + 1
    return wrk.format("POST", "/finish/" .. qtype .. "/" .. job[1] .. "/" .. job[2] .. "/",
                      nil, "")
  end
  return deq
end

function response(status, headers, body)
  if status == 200 then
    n2xx = n2xx + 1
    local jid = body:match('"job_id":%s*"([^"]*)"')
    if jid then
      dequeued = dequeued + 1
      tail = tail + 1
      fifo[tail] = {body:match('"queue_id":%s*"([^"]*)"'), jid}
    else
      finished = finished + 1
    end
  elseif status == 404 then
    if body:find("is not active", 1, true) then
      -- a finish that came too late (lease over, job requeued): an error
      finish404 = finish404 + 1
      nother = nother + 1
    else
      n404 = n404 + 1
    end
  else
    nother = nother + 1
    if nbad < 3 then
      nbad = nbad + 1
      io.stderr:write("unexpected " .. status .. ": " .. tostring(body):sub(1, 200) .. "\n")
    end
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
