-- wrk script for make bench-cluster: the workloads of make bench (enqueue,
-- dequeue, dequeue_finish) over several queue types, each request of a
-- thread taking the next type in turn.
-- wrk ... -s multitype.lua URL -- <workload> <types> <queues per type> <run_tag>
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "wrk_common.lua")

function init(args)
  workload = args[1]
  ntypes = tonumber(args[2]) or 60
  nqueues = tonumber(args[3]) or 100
  tag = args[4] or "r"
  counter = 0
  init_counters()
  fifo, head, tail = {}, 1, 0
  headers = {["Content-Type"] = "application/json"}
end

local function next_type()
  counter = counter + 1
  return "t" .. ((counter + tid * 31) % ntypes)
end

function request()
  if workload == "enqueue" then
    local qtype = next_type()
    local q = (counter + tid * 7919) % nqueues
    local body = '{"job_id":"' .. tag .. '-' .. tid .. '-' .. counter ..
                 '","interval":0,"payload":{"n":' .. counter .. '}}'
    -- the queue id names its type: a dequeue's answer does not
    return wrk.format("POST", "/enqueue/" .. qtype .. "/" .. qtype .. "-q" .. q .. "/",
                      headers, body)
  end
  if workload == "dequeue_finish" and head <= tail then
    local job = fifo[head]
    fifo[head] = nil
    head = head + 1
    return wrk.format("POST", "/finish/" .. job[1] .. "/" .. job[2] .. "/" .. job[3] .. "/",
                      nil, "")
  end
  return wrk.format("GET", "/dequeue/" .. next_type() .. "/")
end

function response(status, headers, body)
  if workload == "enqueue" then
    count_answer(status, body, 201)
    return
  end
  if status == 200 then
    n2xx = n2xx + 1
    local qid = body:match('"queue_id":%s*"([^"]*)"')
    if not qid then
      finished = finished + 1
    elseif workload == "dequeue_finish" then
      tail = tail + 1
      fifo[tail] = {qid:match("^(.-)%-q"), qid, body:match('"job_id":%s*"([^"]*)"')}
    end
  elseif status == 404 and not body:find("is not active", 1, true) then
    n404 = n404 + 1
  elseif status == 404 then
    finish404 = finish404 + 1
    nother = nother + 1
  else
    unexpected(status, body)
  end
end
