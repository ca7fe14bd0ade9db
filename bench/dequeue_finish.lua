-- wrk script: dequeue, then finish each job dequeued.  A dequeue's 200 answer
-- is parsed for queue_id/job_id and the pair goes into this thread's FIFO;
-- the next request of any connection of the thread finishes the oldest one,
-- else dequeues again.  jobs/s = finishes (200 to a finish) per second.
-- wrk ... -s dequeue_finish.lua URL -- <queue_type>
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "wrk_common.lua")

function init(args)
  qtype = args[1] or "bench"
  init_counters()
  dequeued = 0
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
    unexpected(status, body)
  end
end
