"""
Routes and error mapping of the Klein app, in memory through StubTreq, over
a recording stand-in for the queue (queue semantics are tested on a real
Redis in test_queue.py and test_e2e.py).
"""

import json

from treq.testing import StubTreq
from twisted.internet.defer import fail, succeed
from twisted.trial.unittest import TestCase

from sharqd.errors import Conflict, NotFound, QueueFull, RedisUnavailable
from sharqd.queue.operations import Counts, Job
from sharqd.web.app import Api

BASE = "http://sharqd"


class RecordingQueue:
    """Answers like the real Queue, records calls, raises what it is told to."""

    def __init__(self):
        self.calls = []
        self.raises = None
        self.job = None

    def _record(self, name, *args):
        self.calls.append((name,) + args)
        if self.raises is not None:
            raise self.raises

    # like the real Queue, the hot-path operations return Deferreds
    def _deferred(self, name, result, *args):
        try:
            self._record(name, *args)
        except Exception as e:
            return fail(e)
        return succeed(result)

    def enqueue(self, *args):
        return self._deferred("enqueue", 3, *args)

    def dequeue(self, queue_type, lease=None):
        return self._deferred("dequeue", self.job, queue_type)

    def finish(self, *args):
        return self._deferred("finish", None, *args)

    async def set_interval(self, *args):
        self._record("set_interval", *args)

    async def delete_queue(self, *args):
        self._record("delete_queue", *args)

    async def global_metrics(self):
        self._record("global_metrics")
        return ["sms"], Counts([60000, 120000], [1, 2], [0, 5], [0, 1], [0, 4])

    async def queue_id_page(self, queue_type, offset, limit):
        self._record("queue_id_page", queue_type, offset, limit)
        return 2, ["b", "a"]

    async def dead_letter_length(self, queue_type):
        self._record("dead_letter_length", queue_type)
        return 4

    async def queue_metrics(self, *args):
        self._record("queue_metrics", *args)
        return 7, Counts([60000], [4], [3], [2])

    async def ping(self):
        self._record("ping")
        return b"PONG"


class RoutesTests(TestCase):
    def setUp(self):
        self.queue = RecordingQueue()
        self.treq = StubTreq(Api(self.queue, default_requeue_limit=5).resource())

    async def call(self, method, path, body=None, raw=None):
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        response = await self.treq.request(method, BASE + path, data=data)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["application/json"])
        return response.code, json.loads(await response.content())

    def assertFailure400(self, result, message):
        self.assertEqual(result, (400, {"status": "failure", "message": message}))

    # ---- index, unknown routes, methods

    async def test_index_says_hello(self):
        """When / is asked for, the greeting of the original comes back."""
        self.assertEqual(await self.call("GET", "/"), (200, {"message": "Hello, SharQ!"}))

    async def test_unknown_route_is_json_404(self):
        """When no route matches, the answer is 404 JSON."""
        code, body = await self.call("GET", "/nowhere/")
        self.assertEqual((code, body["status"]), (404, "failure"))
        self.assertIn("/nowhere/", body["message"])

    async def test_wrong_method_is_json_405(self):
        """When a route exists with another method, the answer is 405 JSON with Allow."""
        response = await self.treq.request("DELETE", BASE + "/dequeue/sms/")
        self.assertEqual(response.code, 405)
        self.assertIn("GET", response.headers.getRawHeaders("allow")[0])
        self.assertEqual(json.loads(await response.content())["status"], "failure")

    async def test_missing_trailing_slash_redirects(self):
        """When the trailing slash is missing, a JSON redirect points to the route."""
        response = await self.treq.request("GET", BASE + "/dequeue/sms",
                                           allow_redirects=False)
        self.assertEqual(response.code, 308)
        self.assertTrue(response.headers.getRawHeaders("location")[0].endswith(
            "/dequeue/sms/"))

    # ---- enqueue

    async def test_enqueue_queues_with_default_limit(self):
        """When an enqueue is valid, 201 queued; the payload is stored as JSON
        text and the config's default requeue limit applies."""
        result = await self.call("POST", "/enqueue/sms/u1/",
                                 {"job_id": "j1", "interval": 1000, "payload": {"x": [1]}})
        self.assertEqual(result, (201, {"status": "queued"}))
        self.assertEqual(self.queue.calls, [
            ("enqueue", "sms", "u1", "j1", 1000, b'{"x":[1]}', 5, None)])

    async def test_enqueue_any_json_payload(self):
        """When the payload is not an object (string, list, null), it is accepted."""
        for payload in ("text", [1, 2], None, 0):
            code, _ = await self.call("POST", "/enqueue/sms/u1/",
                                      {"job_id": "j1", "interval": 0, "payload": payload})
            self.assertEqual(code, 201)

    async def test_enqueue_max_queued_length_from_payload_or_top(self):
        """When max_queued_length is in the payload or at the top level, it
        is enforced and the answer carries current_queue_length."""
        result = await self.call("POST", "/enqueue/sms/u1/", {
            "job_id": "j1", "interval": 0, "payload": {"max_queued_length": 10}})
        self.assertEqual(result, (201, {"status": "queued", "current_queue_length": 2}))
        await self.call("POST", "/enqueue/sms/u1/", {
            "job_id": "j2", "interval": 0, "payload": {}, "max_queued_length": 4})
        self.assertEqual([c[-1] for c in self.queue.calls], [10, 4])
        self.assertEqual(self.queue.calls[0][5], b'{"max_queued_length":10}')

    async def test_enqueue_refusals_map_to_codes(self):
        """When the queue refuses (duplicate, full, Redis down), the codes are
        409, 429 with the length, and 503."""
        body = {"job_id": "j1", "interval": 0, "payload": {}}
        self.queue.raises = Conflict("dup")
        self.assertEqual((await self.call("POST", "/enqueue/sms/u1/", body))[0], 409)
        self.queue.raises = QueueFull(current_queue_length=4)
        self.assertEqual(await self.call("POST", "/enqueue/sms/u1/", body), (429, {
            "status": "failure", "message": "Max queue length reached",
            "current_queue_length": 4}))
        self.queue.raises = RedisUnavailable()
        code, answer = await self.call("POST", "/enqueue/sms/u1/", body)
        self.assertEqual((code, answer["status"]), (503, "failure"))

    async def test_enqueue_bad_json(self):
        """When the body is not JSON, or not an object, 400 says so."""
        self.assertFailure400(await self.call("POST", "/enqueue/sms/u1/", raw=b"{nope"),
                              "The request body is not valid JSON.")
        self.assertFailure400(await self.call("POST", "/enqueue/sms/u1/", raw=b"[1]"),
                              "The request body must be a JSON object.")
        self.assertFailure400(await self.call("POST", "/enqueue/sms/u1/",
                                              raw=b'{"job_id": NaN}'),
                              "The request body is not valid JSON.")
        self.assertEqual(self.queue.calls, [])

    async def test_enqueue_missing_fields(self):
        """When a required field is missing, 400 names it as mandatory."""
        full = {"job_id": "j1", "interval": 1000, "payload": {}}
        for name in ("job_id", "interval", "payload"):
            body = {k: v for k, v in full.items() if k != name}
            self.assertFailure400(await self.call("POST", "/enqueue/sms/u1/", body),
                                  f"`{name}` is a mandatory parameter.")
        self.assertFailure400(await self.call("POST", "/enqueue/sms/u1/", raw=b""),
                              "`job_id` is a mandatory parameter.")

    async def test_enqueue_invalid_values(self):
        """When a field is present but invalid, 400 names it as invalid."""
        cases = [("job_id", "a b"), ("job_id", 12), ("job_id", "x" * 101),
                 ("interval", "1000"), ("interval", -1), ("interval", 1.5),
                 ("interval", True), ("requeue_limit", -2), ("requeue_limit", "1"),
                 ("max_queued_length", -1), ("max_queued_length", "5")]
        for name, value in cases:
            body = {"job_id": "j1", "interval": 1000, "payload": {}, name: value}
            self.assertFailure400(await self.call("POST", "/enqueue/sms/u1/", body),
                                  f"`{name}` has an invalid value.")
        self.assertEqual(self.queue.calls, [])

    async def test_payload_without_utf8_form_is_invalid(self):
        """When the payload holds a lone surrogate (valid JSON escape, no
        UTF-8 form), 400 says the payload is invalid and nothing is stored."""
        self.assertFailure400(await self.call(
            "POST", "/enqueue/sms/u1/",
            raw=b'{"job_id": "j1", "interval": 0, "payload": "\\ud800"}'),
            "`payload` has an invalid value.")
        self.assertEqual(self.queue.calls, [])

    async def test_path_is_checked_before_body(self):
        """When both the path and the body are bad, the path is reported."""
        self.assertFailure400(await self.call("POST", "/enqueue/s.ms/u1/", raw=b"{bad"),
                              "`queue_type` has an invalid value.")
        self.assertFailure400(await self.call("POST", "/enqueue/sms/u%201/", raw=b"{bad"),
                              "`queue_id` has an invalid value.")

    async def test_hot_path_and_klein_answer_alike(self):
        """When a hot route is reached with a percent escape (served by Klein's
        routing) or plainly (served by the fast dispatch), the answers match."""
        body = {"job_id": "j1", "interval": 0, "payload": {}}
        self.assertEqual(await self.call("POST", "/enqueue/sms/u1/", body),
                         await self.call("POST", "/enqueue/sms/u%31/", body))
        self.assertEqual(self.queue.calls[0], self.queue.calls[1])
        self.queue.raises = Conflict("dup")
        self.assertEqual(await self.call("POST", "/finish/sms/u1/j1/"),
                         await self.call("POST", "/finish/sms/u%31/j1/"))
        self.assertEqual(await self.call("GET", "/dequeue/s.ms/"),
                         await self.call("GET", "/dequeue/s%2Ems/"))
        self.assertEqual((await self.call("GET", "/enqueue/sms/u1/"))[0], 405)
        self.assertEqual((await self.call("POST", "/enqueue//u1/", body))[0], 404)

    # ---- dequeue

    async def test_dequeue_answers_the_job(self):
        """When a job is ready, 200 carries it with its payload as JSON."""
        self.queue.job = Job("u1", "j1", b'{"a": [1, "b"]}', 2, 9, "7")
        self.assertEqual(await self.call("GET", "/dequeue/sms/"), (200, {
            "status": "success", "queue_id": "u1", "job_id": "j1",
            "payload": {"a": [1, "b"]}, "requeues_remaining": 2,
            "current_queue_length": 9, "lease_id": "7"}))

    async def test_dequeue_default_type_and_nothing_ready(self):
        """When /dequeue/ has no type, `default` is used; nothing ready is 404."""
        code, body = await self.call("GET", "/dequeue/")
        self.assertEqual((code, body["status"]), (404, "failure"))
        self.assertEqual(self.queue.calls, [("dequeue", "default")])

    async def test_dequeue_invalid_type(self):
        """When the type is invalid, 400 says so."""
        self.assertFailure400(await self.call("GET", "/dequeue/s%21/"),
                              "`queue_type` has an invalid value.")

    # ---- finish, interval, delete

    async def test_finish(self):
        """When a finish is valid, 200; not active is 404; bad id is 400."""
        self.assertEqual(await self.call("POST", "/finish/sms/u1/j1/"),
                         (200, {"status": "success"}))
        self.queue.raises = NotFound("not active")
        code, body = await self.call("POST", "/finish/sms/u1/j1/")
        self.assertEqual((code, body["status"]), (404, "failure"))
        self.assertFailure400(await self.call("POST", "/finish/sms/u1/j%2A/"),
                              "`job_id` has an invalid value.")

    async def test_interval(self):
        """When an interval is set, 200; missing or invalid interval is 400."""
        self.assertEqual(await self.call("POST", "/interval/sms/u1/", {"interval": 50}),
                         (200, {"status": "success"}))
        self.assertEqual(self.queue.calls, [("set_interval", "sms", "u1", 50)])
        self.assertFailure400(await self.call("POST", "/interval/sms/u1/", {}),
                              "`interval` is a mandatory parameter.")
        self.assertFailure400(await self.call("POST", "/interval/sms/u1/", {"interval": "x"}),
                              "`interval` has an invalid value.")
        self.queue.raises = NotFound("no queue")
        self.assertEqual((await self.call("POST", "/interval/sms/u1/", {"interval": 5}))[0],
                         404)

    async def test_delete_queue(self):
        """When a queue is deleted, body optional; purge_all must be a boolean."""
        code, body = await self.call("DELETE", "/deletequeue/sms/u1/")
        self.assertEqual((code, body["status"]), (200, "success"))
        await self.call("DELETE", "/deletequeue/sms/u1/", {"purge_all": True})
        self.assertEqual(self.queue.calls, [("delete_queue", "sms", "u1", False),
                                            ("delete_queue", "sms", "u1", True)])
        self.assertFailure400(await self.call("DELETE", "/deletequeue/sms/u1/",
                                              {"purge_all": "yes"}),
                              "`purge_all` has an invalid value.")
        self.queue.raises = NotFound("no queue")
        self.assertEqual((await self.call("DELETE", "/deletequeue/sms/u1/"))[0], 404)

    # ---- metrics, deepstatus

    async def test_metrics_shapes(self):
        """When metrics are asked for, the original's fields come back."""
        self.assertEqual(await self.call("GET", "/metrics/"), (200, {
            "status": "success", "queue_types": ["sms"],
            "enqueue_counts": {"60000": 1, "120000": 2},
            "dequeue_counts": {"60000": 0, "120000": 5},
            "dead_letter_counts": {"60000": 0, "120000": 1},
            "finish_counts": {"60000": 0, "120000": 4}}))
        self.assertEqual(await self.call("GET", "/metrics/sms/"),
                         (200, {"status": "success", "queue_ids": ["a", "b"],
                                "dead_letter_length": 4, "total": 2, "offset": 0,
                                "limit": 1000}))
        self.assertEqual(await self.call("GET", "/metrics/sms/u1/"), (200, {
            "status": "success", "queue_length": 7, "enqueue_counts": {"60000": 4},
            "dequeue_counts": {"60000": 3}, "dead_letter_counts": {"60000": 2}}))
        self.assertFailure400(await self.call("GET", "/metrics/s%20/u1/"),
                              "`queue_type` has an invalid value.")

    async def test_type_metrics_pages(self):
        """When /metrics/<type>/ is given offset and limit, the queue asks for
        that page; without them, for the first 1000 ids."""
        await self.call("GET", "/metrics/sms/?offset=2000&limit=500")
        await self.call("GET", "/metrics/sms/")
        pages = [c for c in self.queue.calls if c[0] == "queue_id_page"]
        self.assertEqual(pages, [("queue_id_page", "sms", 2000, 500),
                                 ("queue_id_page", "sms", 0, 1000)])

    async def test_type_metrics_paging_bounds(self):
        """When offset or limit is out of bounds, /metrics/<type>/ answers
        400 and asks the queue nothing."""
        for query, name in [("offset=-1", "offset"), ("limit=0", "limit"),
                            ("limit=10001", "limit"), ("offset=1e3", "offset")]:
            status, body = await self.call("GET", f"/metrics/sms/?{query}")
            self.assertEqual((status, body["message"]),
                             (400, f"`{name}` has an invalid value."), query)
        self.assertEqual(self.queue.calls, [])

    async def test_deepstatus(self):
        """When Redis answers, deepstatus is 200; when not, 503."""
        self.assertEqual(await self.call("GET", "/deepstatus/"), (200, {"status": "success"}))
        self.queue.raises = RedisUnavailable()
        self.assertEqual((await self.call("GET", "/deepstatus/"))[0], 503)

    async def test_unexpected_error_is_500_without_detail(self):
        """When something unexpected breaks, 500 JSON hides the detail and logs it."""
        self.queue.raises = ZeroDivisionError("secret detail")
        code, body = await self.call("GET", "/deepstatus/")
        self.assertEqual(code, 500)
        self.assertNotIn("secret", body["message"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
