"""
The routes of the API extensions (README, "API extensions") through
treq.testing.StubTreq, over a real Queue on a real redis-server.
"""

import json
import time

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from treq.testing import StubTreq

from sharqd.queue.waiters import Waiters
from sharqd.web.app import Api
from support import make_queue, ready_subscription, shared_redis, wait_until

BASE = "http://sharqd"


class ApiExtensions(TestCase):

    async def setUp(self):
        self.q, self.clock = await make_queue(self, expire_ms=1000)
        self.waiters = Waiters(self.q, reactor)
        notify = ready_subscription(shared_redis().section(), self.q.prefix, self.waiters)
        notify.startService()
        self.addCleanup(notify.stopService)
        await wait_until(lambda: self.waiters.live)
        self.stub = StubTreq(Api(self.q, -1, self.waiters).resource())

    async def _pump(self, d):
        """Let the in-memory transport move until d has its result (a
        route's answer arrives after real Redis I/O)."""
        done = []

        def arrived(result):
            done.append(True)
            return result

        d.addBoth(arrived)
        while not done:
            self.stub.flush()
            await deferLater(reactor, 0.002, lambda: None)
        return await d

    async def call(self, method, path, body=None):
        """(status, decoded JSON answer)"""
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        response = await self._pump(self.stub.request(method, BASE + path, data=data))
        content = await self._pump(self.stub.content(response))
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        return response.code, json.loads(content)

    async def put(self, queue_id, job_id, interval=0, limit=-1, value=None):
        status, _ = await self.call("POST", f"/enqueue/sms/{queue_id}/", {
            "job_id": job_id, "interval": interval, "payload": value or {"j": job_id},
            "requeue_limit": limit})
        self.assertEqual(status, 201)

    # ---- dequeue options

    async def test_invalid_wait_count_lease_are_400(self):
        """When wait, count or lease is out of bounds or not a number, the
        dequeue answers 400 naming it."""
        for query, name in [("wait=0", "wait"), ("wait=60.5", "wait"), ("wait=abc", "wait"),
                            ("wait=nan", "wait"), ("wait=-1", "wait"), ("wait=", "wait"),
                            ("count=0", "count"), ("count=101", "count"), ("count=1.5", "count"),
                            ("lease=0", "lease"), ("lease=86400001", "lease")]:
            status, body = await self.call("GET", f"/dequeue/sms/?{query}")
            self.assertEqual((status, body), (400, {
                "status": "failure", "message": f"`{name}` has an invalid value."}), query)

    async def test_dequeue_without_count_keeps_the_single_answer(self):
        """When dequeue has a lease or wait but no count, the answer has the
        single-job form of the plain route."""
        await self.put("q1", "a")
        await self.put("q1", "b")
        plain = await self.call("GET", "/dequeue/sms/")
        leased = await self.call("GET", "/dequeue/sms/?lease=5000&wait=1")
        self.assertEqual(plain, (200, {"status": "success", "queue_id": "q1", "job_id": "a",
                                       "payload": {"j": "a"}, "requeues_remaining": -1,
                                       "current_queue_length": 1,
                                       "lease_id": plain[1]["lease_id"]}))
        self.assertEqual(leased[1]["job_id"], "b")
        self.assertEqual(set(leased[1]), set(plain[1]))

    async def test_unknown_query_arguments_change_nothing(self):
        """When dequeue has only query arguments it does not know, it answers
        as the plain route."""
        await self.put("q1", "a")
        status, body = await self.call("GET", "/dequeue/sms/?foo=bar")
        self.assertEqual((status, body), (200, {
            "status": "success", "queue_id": "q1", "job_id": "a", "payload": {"j": "a"},
            "requeues_remaining": -1, "current_queue_length": 0,
            "lease_id": body["lease_id"]}))
        status, body = await self.call("GET", "/dequeue/sms/?foo=bar")
        self.assertEqual((status, body["status"]), (404, "failure"))

    async def test_dequeue_count_answers_a_list(self):
        """When count is given, up to that many ready jobs come as a list."""
        for job_id in ("a", "b", "c"):
            await self.put("q1", job_id)
        status, body = await self.call("GET", "/dequeue/sms/?count=2")
        leases = [job.get("lease_id") for job in body.get("jobs", ())]
        self.assertEqual((status, body), (200, {"status": "success", "jobs": [
            {"queue_id": "q1", "job_id": "a", "payload": {"j": "a"}, "requeues_remaining": -1,
             "lease_id": leases[0]},
            {"queue_id": "q1", "job_id": "b", "payload": {"j": "b"}, "requeues_remaining": -1,
             "lease_id": leases[1]}]}))

    async def test_dequeue_count_with_nothing_ready_is_404(self):
        """When count is given and nothing is ready, the answer is 404."""
        status, body = await self.call("GET", "/dequeue/sms/?count=5")
        self.assertEqual((status, body["status"]), (404, "failure"))

    async def test_wait_with_nothing_ready_is_404_after_the_wait(self):
        """When nothing becomes ready, a waiting dequeue answers 404 after
        its wait, not before."""
        started = time.monotonic()
        status, _ = await self.call("GET", "/dequeue/sms/?wait=0.3")
        self.assertEqual(status, 404)
        self.assertGreaterEqual(time.monotonic() - started, 0.29)

    async def test_wait_is_answered_by_an_enqueue(self):
        """When a job is enqueued while a client waits, the client gets it at
        once, not at the end of its wait."""
        started = time.monotonic()
        waiting = ensureDeferred(self.call("GET", "/dequeue/sms/?wait=10&count=5"))
        await deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(waiting.called)
        await self.q.enqueue("sms", "q1", "a", 0, b'{"x": 1}', -1)
        status, body = await waiting
        self.assertEqual((status, [j["job_id"] for j in body["jobs"]]), (200, ["a"]))
        self.assertLess(time.monotonic() - started, 2)

    async def test_wait_is_answered_when_an_interval_runs_out(self):
        """When the next job waits for its queue's interval (Redis clock), a
        waiting client gets it when the interval runs out: not before (R1),
        not at the end of its wait."""
        from sharqd.queue.operations import Queue
        q = Queue(self.q.execute, self.q.prefix)  # the Redis server's clock
        stub = StubTreq(Api(q, -1, Waiters(q, reactor)).resource())
        await q.enqueue("sms", "q1", "a", 400, b"1", -1)
        await q.enqueue("sms", "q1", "b", 400, b"2", -1)
        self.assertEqual((await q.dequeue("sms")).job_id, "a")
        started = time.monotonic()
        self.stub, saved = stub, self.stub
        try:
            status, body = await self.call("GET", "/dequeue/sms/?wait=10")
        finally:
            self.stub = saved
        took = time.monotonic() - started
        self.assertEqual((status, body["job_id"]), (200, "b"))
        self.assertGreater(took, 0.3)
        self.assertLess(took, 0.9)  # the re-check without notifications is 1 s

    async def test_default_type_waits_too(self):
        """When /dequeue/ (type default) has a wait, it applies."""
        started = time.monotonic()
        status, _ = await self.call("GET", "/dequeue/?wait=0.2")
        self.assertEqual(status, 404)
        self.assertGreaterEqual(time.monotonic() - started, 0.19)

    # ---- batches

    async def test_batch_enqueue_answers_per_job(self):
        """When a batch mixes good, duplicate and invalid jobs, the good ones
        are stored and each job gets its own result."""
        status, body = await self.call("POST", "/enqueue/sms/", {"jobs": [
            {"queue_id": "q1", "job_id": "a", "interval": 0, "payload": {}},
            {"queue_id": "q1", "job_id": "a", "interval": 0, "payload": {}},
            {"queue_id": "q1", "job_id": "b", "interval": -5, "payload": {}},
            {"job_id": "c", "interval": 0, "payload": {}},
            {"queue_id": "q2", "job_id": "d", "interval": 0, "payload": {},
             "max_queued_length": 0},
            {"queue_id": "q2", "job_id": "e", "interval": 0, "payload": [1, 2]},
            "not a job"]})
        self.assertEqual(status, 201)
        self.assertEqual(body["status"], "queued")
        self.assertEqual(body["results"], [
            {"status": "queued"},
            {"status": "failure", "code": 409,
             "message": "Job `a` is already pending or active in queue `sms/q1`."},
            {"status": "failure", "code": 400, "message": "`interval` has an invalid value."},
            {"status": "failure", "code": 400, "message": "`queue_id` is a mandatory parameter."},
            {"status": "failure", "code": 429, "message": "Max queue length reached",
             "current_queue_length": 0},
            {"status": "queued"},
            {"status": "failure", "code": 400, "message": "A job must be a JSON object."}])
        status, body = await self.call("GET", "/dequeue/sms/?count=10")
        self.assertEqual([j["job_id"] for j in body["jobs"]], ["a", "e"])

    async def test_batch_size_is_bounded(self):
        """When jobs is missing, not a list, empty or over 1,000, the batch is
        refused with 400 and nothing is stored."""
        job = {"queue_id": "q1", "job_id": "a", "interval": 0, "payload": {}}
        for body in [{}, {"jobs": {}}, {"jobs": []}, {"jobs": [job] * 1001}]:
            for route in ("/enqueue/sms/", "/finish/sms/"):
                status, answer = await self.call("POST", route, body)
                self.assertEqual(status, 400, (route, body if len(str(body)) < 99 else "big"))
                self.assertIn("`jobs`", answer["message"])
        self.assertEqual(await self.q.queue_ids("sms"), [])

    async def test_batch_finish_answers_per_job(self):
        """When a batch finish mixes active, pending and invalid jobs, each
        gets its own result."""
        await self.put("q1", "a")
        await self.put("q1", "b")
        await self.call("GET", "/dequeue/sms/")
        status, body = await self.call("POST", "/finish/sms/", {"jobs": [
            {"queue_id": "q1", "job_id": "a"}, {"queue_id": "q1", "job_id": "b"},
            {"queue_id": "q1"}, {"queue_id": "q!", "job_id": "a"}]})
        self.assertEqual((status, body), (200, {"status": "success", "results": [
            {"status": "success"},
            {"status": "failure", "code": 404,
             "message": "Job `b` is not active in queue `sms/q1`."},
            {"status": "failure", "code": 400, "message": "`job_id` is a mandatory parameter."},
            {"status": "failure", "code": 400, "message": "`queue_id` has an invalid value."},
        ]}))

    # ---- leases

    async def test_touch_route(self):
        """When an active job is touched it answers 200 with the new
        deadline; a job not active is 404; a bad lease is 400."""
        await self.put("q1", "a")
        await self.call("GET", "/dequeue/sms/")
        status, body = await self.call("POST", "/touch/sms/q1/a/", {"lease": 30000})
        now_ms = int(self.clock.now * 1000)
        self.assertEqual((status, body), (200, {"status": "success", "lease": 30000,
                                                "deadline": now_ms + 30000}))
        status, body = await self.call("POST", "/touch/sms/q1/a/")
        self.assertEqual((status, body["deadline"]), (200, now_ms + 1000))
        status, _ = await self.call("POST", "/touch/sms/q1/zz/")
        self.assertEqual(status, 404)
        for lease in (0, 86_400_001, "5", 1.5, True):
            status, body = await self.call("POST", "/touch/sms/q1/a/", {"lease": lease})
            self.assertEqual((status, body["message"]), (400, "`lease` has an invalid value."))

    # ---- dead letters

    async def kill(self, queue_id, job_id, limit=0):
        await self.put(queue_id, job_id, limit=limit)
        for _ in range(limit + 1):
            await self.call("GET", "/dequeue/sms/")
            self.clock.advance(1.001)
            await self.q.requeue("sms", 100)

    async def test_dead_letter_routes(self):
        """When jobs died, they are listed newest first, a retry puts one
        back (201), a second retry is 404, a delete drops one and a purge
        the rest; the metrics count them."""
        await self.kill("q1", "a", limit=1)
        await self.kill("q1", "b")
        await self.kill("q2", "c")
        status, body = await self.call("GET", "/deadletters/sms/?limit=2")
        self.assertEqual((status, body["total"], body["offset"], body["limit"]), (200, 3, 0, 2))
        self.assertEqual([e["job_id"] for e in body["dead_letters"]], ["c", "b"])
        entry = body["dead_letters"][0]
        self.assertEqual(set(entry), {"queue_id", "job_id", "payload", "requeue_limit",
                                      "requeues_spent", "interval", "failed_at", "reason"})
        status, body = await self.call("GET", "/deadletters/sms/?offset=2")
        self.assertEqual([e["job_id"] for e in body["dead_letters"]], ["a"])
        self.assertEqual(body["dead_letters"][0]["requeue_limit"], 1)
        status, body = await self.call("GET", "/metrics/sms/")
        self.assertEqual(body["dead_letter_length"], 3)
        status, body = await self.call("GET", "/metrics/")
        self.assertEqual(list(body["dead_letter_counts"].values())[-1], 3)

        self.assertEqual(await self.call("POST", "/deadletters/sms/q1/a/retry/"),
                         (201, {"status": "queued"}))
        status, _ = await self.call("POST", "/deadletters/sms/q1/a/retry/")
        self.assertEqual(status, 404)
        status, body = await self.call("GET", "/dequeue/sms/")
        self.assertEqual((body["job_id"], body["requeues_remaining"]), ("a", 1))
        self.assertEqual(await self.call("DELETE", "/deadletters/sms/q1/b/"),
                         (200, {"status": "success", "deleted": 1}))
        status, _ = await self.call("DELETE", "/deadletters/sms/q1/b/")
        self.assertEqual(status, 404)
        self.assertEqual(await self.call("DELETE", "/deadletters/sms/"),
                         (200, {"status": "success", "deleted": 1}))

    async def test_dead_letter_retry_conflict_is_409(self):
        """When the dead job's id is pending again, retry answers 409."""
        await self.kill("q1", "a")
        await self.put("q1", "a")
        status, body = await self.call("POST", "/deadletters/sms/q1/a/retry/")
        self.assertEqual((status, body["status"]), (409, "failure"))

    async def test_dead_letter_paging_bounds(self):
        """When offset or limit is out of bounds, the list answers 400."""
        for query, name in [("offset=-1", "offset"), ("limit=0", "limit"),
                            ("limit=1001", "limit"), ("offset=x", "offset")]:
            status, body = await self.call("GET", f"/deadletters/sms/?{query}")
            self.assertEqual((status, body["message"]),
                             (400, f"`{name}` has an invalid value."), query)

    async def test_invalid_identifiers_are_400(self):
        """When a path identifier of a new route is invalid, it answers 400."""
        for method, path in [("GET", "/deadletters/s!/"), ("DELETE", "/deadletters/s!/"),
                             ("POST", "/deadletters/sms/q!/a/retry/"),
                             ("DELETE", "/deadletters/sms/q1/a!/"),
                             ("POST", "/touch/sms/q1/a!/"), ("POST", "/enqueue/s!/"),
                             ("POST", "/finish/s!/")]:
            status, _ = await self.call(method, path, b'{"jobs": [{}]}')
            self.assertEqual(status, 400, path)


class PayloadEncoding(TestCase):

    def test_encoding_matches_json_dumps(self):
        """When a payload is encoded, the bytes are compact JSON as
        json.dumps(separators=(",", ":"), ensure_ascii=False) writes it."""
        from sharqd.web import validation
        samples = [{"to": "+1555", "text": "hi"}, "x", 1, 2**70, 1.5, -0.0, 1e300, None,
                   True, [], {}, {"a": [1, {"b": "héllo \u2028 \"q\" \\ \n \x00 😀"}]},
                   [1.0000000000000002, 3.14]]
        self.assertEqual(
            [validation.encode_payload(p) for p in samples],
            [json.dumps(p, separators=(",", ":"), ensure_ascii=False).encode()
             for p in samples])
