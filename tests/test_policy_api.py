"""
The routes of rate policies, pause, explain and lease ids (README "Rate
policy") through StubTreq, over a real Queue, waiters and notifications on a
real redis-server.
"""

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

import test_api_extensions
from support import wait_until


class PolicyRoutes(TestCase):

    # the same harness as the API extensions' tests: a real Queue, waiters
    # and their ready-channel subscription on the shared redis-server
    setUp = test_api_extensions.ApiExtensions.setUp
    _pump = test_api_extensions.ApiExtensions._pump
    call = test_api_extensions.ApiExtensions.call
    put = test_api_extensions.ApiExtensions.put

    async def waiting(self, path):
        """A long-poll request in flight, checked to be still waiting after
        its first attempt found nothing."""
        d = ensureDeferred(self.call("GET", path))
        await wait_until(lambda: self.waiters.waiting("sms") == 1)
        await deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(d.called)
        return d

    # ---- PUT / GET / DELETE

    async def test_put_get_delete_queue_policy(self):
        """When a policy is put, GET answers it (burst 1 when not given) and
        DELETE drops it: GET is then 404 with where to look."""
        status, body = await self.call("PUT", "/policy/sms/q1/", {"rate": 4, "max_active": 2})
        self.assertEqual((status, body), (200, {
            "status": "success", "rate": 4.0, "burst": 1, "max_active": 2, "paused": None}))
        self.assertEqual(await self.call("GET", "/policy/sms/q1/"), (200, body))
        self.assertEqual((await self.call("DELETE", "/policy/sms/q1/"))[0], 200)
        status, body = await self.call("GET", "/policy/sms/q1/")
        self.assertEqual(status, 404)
        self.assertIn("/queues/sms/q1/", body["message"])
        self.assertEqual((await self.call("DELETE", "/policy/sms/q1/"))[0], 404)

    async def test_put_changes_the_fields_given(self):
        """When a policy is put again, the fields it gives change, a null
        removes one, and the others stay."""
        await self.call("PUT", "/policy/sms/q1/", {"rate": 4, "burst": 3, "max_active": 2})
        status, body = await self.call("PUT", "/policy/sms/q1/",
                                       {"paused": True, "max_active": None})
        self.assertEqual((status, body), (200, {
            "status": "success", "rate": 4.0, "burst": 3, "max_active": None,
            "paused": True}))
        self.assertEqual((await self.call("GET", "/policy/sms/q1/"))[1], body)
        status, body = await self.call("PUT", "/policy/sms/q1/", {"rate": None})
        self.assertEqual(status, 400)
        self.assertIn("`burst` needs a `rate`", body["message"])

    async def test_type_default_policy(self):
        """When a type default is put, GET /policy/<type>/ answers it and a
        queue without its own follows it (explain names the source)."""
        self.assertEqual((await self.call("PUT", "/policy/sms/", {"max_active": 1}))[0], 200)
        self.assertEqual((await self.call("GET", "/policy/sms/"))[1]["max_active"], 1)
        await self.put("q1", "a")
        await self.put("q1", "b")
        self.assertEqual((await self.call("GET", "/dequeue/sms/?count=5"))[0], 200)
        status, body = await self.call("GET", "/queues/sms/q1/")
        self.assertEqual((body["policy_source"], body["reason"], body["active"]),
                         ("type", "max_active", 1))
        self.assertEqual((await self.call("DELETE", "/policy/sms/"))[0], 200)
        self.assertEqual((await self.call("GET", "/policy/sms/"))[0], 404)

    async def test_bad_policy_bodies_are_400_and_change_nothing(self):
        """When a policy body has an unknown field, a wrong type or a value out
        of range, the answer is 400 naming the field and the policy stays."""
        await self.call("PUT", "/policy/sms/q1/", {"max_active": 5})
        for body, name in [({"rat": 1}, "rat"), ({"rate": 0}, "rate"), ({"rate": -2}, "rate"),
                           ({"rate": "3"}, "rate"), ({"rate": True}, "rate"),
                           ({"rate": 1e7}, "rate"), ({"rate": 1, "burst": 0}, "burst"),
                           ({"rate": 1, "burst": 1.5}, "burst"), ({"burst": 2}, "burst"),
                           ({"max_active": 3, "burst": 2}, "burst"),
                           ({"max_active": 0}, "max_active"), ({"max_active": "2"}, "max_active"),
                           ({"paused": "yes"}, "paused"), ({"paused": 1}, "paused")]:
            for path in ("/policy/sms/q1/", "/policy/sms/"):
                status, answer = await self.call("PUT", path, body)
                self.assertEqual(status, 400, body)
                self.assertIn(f"`{name}`", answer["message"])
        self.assertEqual((await self.call("PUT", "/policy/sms/q1/", b"[1]"))[0], 400)
        self.assertEqual((await self.call("PUT", "/policy/sms/q1/", b"{"))[0], 400)
        self.assertEqual((await self.call("PUT", "/policy/sm s/q1/", {}))[0], 400)
        self.assertEqual((await self.call("GET", "/policy/sms/q1/"))[1]["max_active"], 5)
        self.assertEqual((await self.call("GET", "/policy/sms/"))[0], 404)

    # ---- pause / resume

    async def test_paused_type_dequeue_is_404_saying_so(self):
        """When a type is paused, dequeue (plain and batch) answers 404 saying
        it is paused; enqueue still works; resume lets jobs go."""
        await self.put("q1", "a")
        self.assertEqual(await self.call("POST", "/pause/sms/"), (200, {
            "status": "success", "paused": True, "changed": True}))
        for path in ("/dequeue/sms/", "/dequeue/sms/?count=3"):
            status, body = await self.call("GET", path)
            self.assertEqual(status, 404)
            self.assertIn("paused", body["message"])
            self.assertIn("/resume/sms/", body["message"])
        await self.put("q1", "b")
        self.assertEqual((await self.call("POST", "/resume/sms/"))[1]["changed"], True)
        status, body = await self.call("GET", "/dequeue/sms/?count=3")
        self.assertEqual([j["job_id"] for j in body["jobs"]], ["a", "b"])

    async def test_long_poll_waits_through_a_pause_and_wakes_on_resume(self):
        """When a client long-polls a paused type, an enqueue does not answer
        it; the resume does, with the job, well before its wait ends."""
        await self.call("POST", "/pause/sms/")
        waiting = await self.waiting("/dequeue/sms/?wait=20")
        await self.put("q1", "a")
        await deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(waiting.called)
        await self.call("POST", "/resume/sms/")
        status, body = await waiting
        self.assertEqual((status, body["job_id"]), (200, "a"))

    async def test_long_poll_on_paused_type_ends_saying_paused(self):
        """When a long-poll's wait ends with the type still paused, the 404
        says it is paused."""
        await self.call("POST", "/pause/sms/")
        status, body = await self.call("GET", "/dequeue/sms/?wait=0.2")
        self.assertEqual(status, 404)
        self.assertIn("paused", body["message"])

    async def test_long_poll_wakes_when_a_capped_queue_drops_under_its_cap(self):
        """When a client long-polls while the only queue is at max_active, a
        finish of its active job hands the next job to the client."""
        await self.call("PUT", "/policy/sms/q1/", {"max_active": 1})
        await self.put("q1", "a")
        await self.put("q1", "b")
        _, first = await self.call("GET", "/dequeue/sms/")
        waiting = await self.waiting("/dequeue/sms/?wait=20")
        await self.call("POST", f"/finish/sms/q1/a/?lease_id={first['lease_id']}")
        status, body = await waiting
        self.assertEqual((status, body["job_id"]), (200, "b"))

    async def test_long_poll_wakes_when_a_paused_queue_resumes(self):
        """When a client long-polls while the only queue is paused, putting a
        policy without pause hands its job to the client."""
        await self.call("PUT", "/policy/sms/q1/", {"paused": True})
        await self.put("q1", "a")
        waiting = await self.waiting("/dequeue/sms/?wait=20")
        await self.call("PUT", "/policy/sms/q1/", {"paused": False})
        status, body = await waiting
        self.assertEqual((status, body["job_id"]), (200, "a"))

    # ---- explain

    async def test_explain_answers_the_queue_state(self):
        """When a queue is explained, the answer carries its counts, the
        policy in force and its source, tokens, readiness and reason."""
        await self.call("PUT", "/policy/sms/q1/", {"rate": 2, "burst": 2})
        await self.put("q1", "a", interval=1000)
        await self.put("q1", "b", interval=1000)
        await self.put("q1", "c", interval=1000)
        await self.call("GET", "/dequeue/sms/?count=5")
        status, body = await self.call("GET", "/queues/sms/q1/")
        now = body["now"]
        self.assertEqual((status, body), (200, {
            "status": "success", "queue_type": "sms", "queue_id": "q1",
            "pending": 1, "active": 2,
            "policy": {"rate": 2.0, "burst": 2, "max_active": None, "paused": False,
                       "interval": 1000},
            "policy_source": "queue", "limited_by": "rate", "type_paused": False,
            "policy_sources": {"rate": "queue", "max_active": None, "paused": None},
            "tokens": 0, "ready": False, "reason": "rate",
            "next_ready_at": now + 500, "now": now}))

    async def test_explain_unknown_queue_is_empty(self):
        """When a queue has never existed, explain says it is empty."""
        status, body = await self.call("GET", "/queues/sms/nobody/")
        self.assertEqual((status, body["reason"], body["policy_source"], body["tokens"]),
                         (200, "empty", "interval", 1))

    # ---- leases over HTTP

    async def test_finish_with_a_stale_lease_is_409(self):
        """When a finish carries the lease id of an earlier hand-out (body or
        query), it answers 409 and the job stays active for its worker."""
        await self.put("q1", "a")
        _, first = await self.call("GET", "/dequeue/sms/")
        self.clock.advance(1.001)
        await self.q.requeue("sms", 100)
        _, second = await self.call("GET", "/dequeue/sms/")
        status, body = await self.call("POST", "/finish/sms/q1/a/",
                                       {"lease_id": first["lease_id"]})
        self.assertEqual(status, 409)
        self.assertIn("handed out again", body["message"])
        status, _ = await self.call("POST", f"/finish/sms/q1/a/?lease_id={first['lease_id']}")
        self.assertEqual(status, 409)
        status, _ = await self.call("POST", "/touch/sms/q1/a/", {"lease_id": first["lease_id"]})
        self.assertEqual(status, 409)
        self.assertEqual((await self.call("POST", "/touch/sms/q1/a/",
                                          {"lease_id": second["lease_id"]}))[0], 200)
        self.assertEqual(await self.call("POST", "/finish/sms/q1/a/",
                                         {"lease_id": second["lease_id"]}),
                         (200, {"status": "success"}))

    async def test_batch_finish_checks_leases(self):
        """When a batch finish gives lease ids, a stale one fails with 409 in
        its place and the others finish."""
        await self.put("q1", "a")
        await self.put("q1", "b")
        _, body = await self.call("GET", "/dequeue/sms/?count=2")
        a, b = body["jobs"]
        status, body = await self.call("POST", "/finish/sms/", {"jobs": [
            {"queue_id": "q1", "job_id": "a", "lease_id": a["lease_id"]},
            {"queue_id": "q1", "job_id": "b", "lease_id": "17"}]})
        self.assertEqual([r["status"] for r in body["results"]], ["success", "failure"])
        self.assertEqual(body["results"][1]["code"], 409)

    async def test_bad_lease_id_is_400(self):
        """When a lease id is not a lease id, finish and touch answer 400."""
        await self.put("q1", "a")
        await self.call("GET", "/dequeue/sms/")
        for method, path, body in [("POST", "/finish/sms/q1/a/?lease_id=a%20b", None),
                                   ("POST", "/finish/sms/q1/a/", {"lease_id": [1]}),
                                   ("POST", "/touch/sms/q1/a/", {"lease_id": ""})]:
            status, answer = await self.call(method, path, body)
            self.assertEqual((status, answer["message"]),
                             (400, "`lease_id` has an invalid value."), path)

    async def test_finish_ignores_a_body_that_is_not_json_as_before(self):
        """When a finish has a body that is not JSON, it is ignored as it
        always was."""
        await self.put("q1", "a")
        await self.call("GET", "/dequeue/sms/")
        self.assertEqual((await self.call("POST", "/finish/sms/q1/a/", b"whatever"))[0], 200)
