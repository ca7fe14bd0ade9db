"""
/prometheus, the dashboard's read routes and /openapi.json: the queue-layer
figures on a real redis-server, the routes through a real `twistd -n sharq`
process, and the OpenAPI document against the routes the server has.
"""

import json
import re
import signal
import time
import urllib.request
import zlib

import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import TestCase

from sharqd.errors import Conflict, QueueFull
from sharqd.queue.operations import BatchJob
from sharqd.web.app import Api
from sharqd.web.openapi import DOCUMENT
from support import RedisServer, Sharqd, make_queue, shared_redis, wait_for


def payload(value):
    return json.dumps(value).encode()


class TypeStatsTests(TestCase):
    cluster = False

    async def setUp(self):
        self.q, self.clock = await make_queue(self, cluster=self.cluster)

    async def put(self, queue_id, job_id, qtype="sms", interval=1000, limit=-1):
        await self.q.enqueue(qtype, queue_id, job_id, interval, payload({}), limit)

    async def test_stats_count_pending_active_ready(self):
        """When a type has pending, active and ready jobs, type_stats counts
        each, and the longest ready wait is measured from the ready time."""
        for i in range(3):
            await self.put("u1", f"a{i}")
        await self.put("u2", "b0")
        await self.q.dequeue("sms")  # u1 or u2: both ready at the same time
        self.clock.advance(2.5)
        stats = await self.q.type_stats("sms")
        self.assertEqual((stats.pending, stats.active, stats.ready_queues,
                          stats.dead_letters), (3, 1, 2, 0))
        self.assertEqual(stats.oldest_ready_age, 2.5)

    async def exact_pending(self, qtype="sms"):
        """The pending jobs of a type counted list by list, the slow way."""
        base = f"{self.q.prefix}:{{{qtype}}}"
        total = 0
        for qid in await self.q.execute(b"SMEMBERS", f"{base}:queues"):
            total += await self.q.execute(b"LLEN", f"{base}:pending:{qid.decode()}")
        return total

    async def assert_pending(self, expected):
        self.assertEqual(await self.exact_pending(), expected)
        self.assertEqual((await self.q.type_stats("sms")).pending, expected)

    async def test_pending_follows_every_way_in_and_out(self):
        """The pending gauge is O(1) (kept from the totals), yet equals the
        jobs in the lists after enqueues, batch enqueues, dequeues, batch
        dequeues, a requeue, a dead letter put back, a paused queue (out of
        the ready set) and a deleted queue."""
        await self.put("u1", "a", limit=0)
        await self.put("u1", "b")
        await self.q.enqueue_many("sms", [BatchJob("u2", f"c{i}", 0, payload({}), -1, None)
                                          for i in range(5)])
        await self.assert_pending(7)
        await self.q.dequeue("sms")
        await self.q.dequeue_many("sms", 3)
        await self.assert_pending(3)
        self.clock.advance(5)  # the leases (1 s) run out
        await self.q.requeue("sms", 100)  # "a" (limit 0) becomes a dead letter
        await self.assert_pending(6)
        await self.q.retry_dead_letter("sms", "u1", "a")
        await self.assert_pending(7)
        await self.q.put_policy("sms", "u2", {"paused": True})
        await self.assert_pending(7)
        await self.q.delete_queue("sms", "u2")
        await self.assert_pending(await self.exact_pending())
        self.assertEqual(await self.exact_pending(), 2)

    async def test_pending_counts_jobs_stored_before_totals(self):
        """Jobs stored by a sharqd that kept no totals (an upgrade) are
        counted once, at the first read, and the gauge stays exact after."""
        for i in range(23):
            for j in range(i % 3 + 1):
                await self.put(f"q{i}", f"j{j}")
        await self.q.execute(b"DEL", f"{self.q.prefix}:{{sms}}:totals")
        await self.assert_pending(sum(i % 3 + 1 for i in range(23)))
        await self.q.dequeue_many("sms", 5)
        await self.put("new", "x")
        await self.assert_pending(sum(i % 3 + 1 for i in range(23)) - 5 + 1)

    async def test_totals_count_each_event_once(self):
        """When jobs are enqueued (single and batch), refused, dequeued,
        finished, requeued and dead-lettered, the type's totals count each
        event once, and /metrics/ counts the finishes per minute."""
        await self.put("u1", "j1", limit=1)
        await self.put("u1", "j2")
        with self.assertRaises(Conflict):
            await self.put("u1", "j1")
        with self.assertRaises(QueueFull):
            await self.q.enqueue("sms", "u1", "j3", 0, payload({}), -1, 2)
        await self.q.enqueue_many("sms", [BatchJob("u2", "k1", 0, payload({}), 0),
                                          BatchJob("u2", "k1", 0, payload({}), 0),
                                          BatchJob("u2", "k2", 0, payload({}), 0, 1)])
        jobs, _ = await self.q.dequeue_many("sms", 10)  # j1 and k1
        await self.q.finish_many("sms", [("u1", "j1"), ("u1", "nope")])
        self.clock.advance(1.001)
        await self.q.requeue("sms", 100)  # k1: budget 0, a dead letter
        job = await self.q.dequeue("sms")  # j2
        await self.q.finish("sms", job.queue_id, job.job_id)
        stats = await self.q.type_stats("sms")
        self.assertEqual(stats.totals, {
            "enqueued": 3, "rejected_duplicate": 2, "rejected_max_queued_length": 2,
            "dequeued": 3, "finished": 2, "requeued": 0, "dead_lettered": 1})
        self.assertEqual(len(jobs), 2)
        _, counts = await self.q.global_metrics()
        self.assertEqual(sum(counts.finished), 2)

    async def test_requeues_are_totalled(self):
        """When a lease runs out and the job is put back, requeued counts it."""
        await self.put("u1", "j1")
        await self.q.dequeue("sms")
        self.clock.advance(1.001)
        await self.q.requeue("sms", 100)
        self.assertEqual((await self.q.type_stats("sms")).totals["requeued"], 1)

    async def test_known_types_outlive_their_queues(self):
        """When a type's last queue is gone after a read, the type is still
        listed (its dead letters and totals stay visible)."""
        await self.put("u1", "j1", qtype="email")
        self.assertEqual(await self.q.known_types(), ["email"])
        await self.q.delete_queue("email", "u1")
        self.assertEqual([s.queue_type for s in await self.q.all_type_stats()], ["email"])

    async def test_known_types_follow_the_registry(self):
        """When types come, from this process or another (straight in
        Redis), each read lists all of them, sorted, however the
        registry's order moves."""
        await self.put("u1", "j1", qtype="sms")
        self.assertEqual(await self.q.known_types(), ["sms"])
        await self.put("u1", "j2", qtype="email")
        self.assertEqual(await self.q.known_types(), ["email", "sms"])
        await self.q.execute(b"ZADD", self.q.registry, 1, "sms")  # order moves
        self.assertEqual(await self.q.known_types(), ["email", "sms"])
        await self.q.execute(b"SADD", f"{self.q.prefix}:known_types", "fax")
        self.assertEqual(await self.q.known_types(), ["email", "fax", "sms"])
        await self.q.execute(b"ZADD", self.q.registry, 2, "push")
        self.assertEqual(await self.q.registered_types(), ["email", "push", "sms"])
        self.assertEqual(await self.q.known_types(), ["email", "fax", "push", "sms"])

    async def test_concurrent_reads_share_one(self):
        """When the figures are asked for again while a read runs, both get
        the same result from one read."""
        await self.put("u1", "j1")
        first, second = self.q.all_type_stats(), self.q.all_type_stats()
        self.assertIs(await first, await second)
        self.assertEqual([s.pending for s in await self.q.all_type_stats()], [1])

    async def fill_types(self, count):
        """count types, each with its own figures: i+1 pending jobs over
        two queues, i % 3 of them active, one dead letter where i % 4 == 0,
        and a duplicate refused where i % 5 == 0."""
        types = [f"t{i:02d}" for i in range(count)]
        for i, qtype in enumerate(types):
            jobs = [BatchJob(f"q{j % 2}", f"j{j}", 0, payload({}), 0 if j == 0 else -1)
                    for j in range(i + 1)]
            if i % 5 == 0:
                jobs.append(jobs[-1])
            await self.q.enqueue_many(qtype, jobs)
            if i % 3:
                await self.q.dequeue_many(qtype, i % 3)
        self.clock.advance(1.5)  # leases of 1 s: the j0 taken dies (budget 0)
        for qtype in types[::4]:
            await self.q.requeue(qtype, 100)
        return types

    async def test_many_types_read_in_batches_as_one_by_one(self):
        """When the figures of many types are read in batches, each batch is
        one script call (no type read alone; on a cluster, a function
        reading keys of several slots of its master) whose figures are
        those a read of each type alone gives; batches hold at most the
        size asked, and every type is in exactly one batch."""
        types = await self.fill_types(23)
        alone = {t: await self.q.type_stats(t) for t in types}  # counts each base
        batches = self.q.stats_batches(types, size=5)
        self.assertEqual(sorted(t for b in batches for t in b), types)
        self.assertLessEqual(max(len(b) for b in batches), 5)

        def not_alone(queue_type, limit=None):
            raise AssertionError(f"{queue_type} read alone, not in its batch")
        self.patch(self.q, "type_stats", not_alone)
        read = {s.queue_type: s for b in batches for s in await self.q.stats_many(b)}
        self.assertEqual(read, alone)
        self.assertEqual([s.queue_type for s in await self.q.all_type_stats()], types)
        self.assertEqual(read["t04"].dead_letters, 1)
        self.assertEqual((read["t05"].pending, read["t05"].active), (4, 2))
        self.assertEqual(read["t05"].totals["rejected_duplicate"], 1)

    async def test_batch_counts_a_type_without_base_alone(self):
        """When a type of a batch has jobs stored before its totals existed,
        the batch still gives its exact pending count (read alone, once),
        and its other types' figures."""
        types = await self.fill_types(6)
        before = [await self.q.type_stats(t) for t in types]
        await self.q.execute(b"HDEL", f"{self.q.prefix}:{{t03}}:totals", b"pending_base")
        self.assertEqual(await self.q.stats_many(types), before)
        raw = await self.q.execute(b"HGET", f"{self.q.prefix}:{{t03}}:totals",
                                   b"pending_base")
        self.assertIsNotNone(raw)

    async def test_top_queues_most_pending_first(self):
        """When queues have different lengths, top_queues lists the longest
        first (ties by id), with interval and ready time, across steps."""
        lengths = {"a": 2, "b": 5, "c": 1, "d": 5, "e": 3}
        for qid, n in lengths.items():
            for j in range(n):
                await self.put(qid, f"j{j}", interval=250)
        rows = await self.q.top_queues("sms", limit=3, step=2)
        self.assertEqual([(r.queue_id, r.pending) for r in rows],
                         [("b", 5), ("d", 5), ("e", 3)])
        self.assertEqual({(r.interval, r.active) for r in rows}, {(250, 0)})
        self.assertEqual(rows[0].ready_at, int(self.clock() * 1000))
        by_id = await self.q.top_queues("sms", limit=3, step=2, sort="queue_id")
        self.assertEqual([r.queue_id for r in by_id], ["a", "b", "c"])

    async def test_top_queues_include_queues_with_only_active_jobs(self):
        """When a queue's only job is active, it is listed with 0 pending and
        no ready time."""
        await self.put("z1", "j1")
        await self.q.dequeue("sms")
        await self.put("a1", "j2")
        rows = await self.q.top_queues("sms", sort="queue_id")
        self.assertEqual([(r.queue_id, r.pending, r.active, r.ready_at is None)
                          for r in rows], [("a1", 1, 0, False), ("z1", 0, 1, True)])


class TypeStatsClusterTests(TypeStatsTests):
    """The same on a Redis Cluster: a batch holds types of one master."""
    cluster = True

    async def test_batches_keep_to_one_master(self):
        """When types are spread over the masters, no batch mixes two."""
        types = await self.fill_types(20)
        nodes = {self.q.node_of(f"{self.q.prefix}:{{{t}}}") for t in types}
        self.assertGreater(len(nodes), 1)
        for batch in self.q.stats_batches(types):
            self.assertEqual(
                len({self.q.node_of(f"{self.q.prefix}:{{{t}}}") for t in batch}), 1)

    async def test_a_batch_over_two_masters_is_read_type_by_type(self):
        """When a batch names types of two masters (a slot moved since it was
        made), the cluster refuses the one call and the types are read one
        by one, with the same figures."""
        types = await self.fill_types(12)
        self.assertGreater(len({self.q.node_of(f"{self.q.prefix}:{{{t}}}")
                                for t in types}), 1)
        self.assertEqual(await self.q.stats_many(types),
                         [await self.q.type_stats(t) for t in types])


@pytest.fixture
def server(tmp_path):
    started = Sharqd(str(tmp_path), shared_redis()).start()
    yield started
    started.stop(signal.SIGKILL)


def answer(server, path, headers=None):
    """(status, headers, body) of a GET."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}",
                                     headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.headers, response.read()


def get(server, path, headers=None):
    status, headers, body = answer(server, path, headers)
    return status, headers["content-type"], body


def samples(text):
    """{(name, frozenset(labels)): value} of an exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.slow
def test_prometheus_exposition(server):
    """When /prometheus is scraped, it answers prometheus_client's text
    format and content type, with the queue gauges per type and the
    process's request counts by route template (never by queue id)."""
    for i in range(3):
        server.request("POST", f"/enqueue/sms/user{i}/",
                       {"job_id": "j1", "interval": 0, "payload": {}})
    server.request("GET", "/dequeue/sms/")
    status, content_type, body = get(server, "/prometheus")
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    found = samples(body.decode())
    sms = frozenset({("queue_type", "sms")})
    assert found[("sharqd_jobs_pending", sms)] == 2
    assert found[("sharqd_jobs_active", sms)] == 1
    assert found[("sharqd_queues_ready", sms)] == 2
    assert found[("sharqd_dead_letters", sms)] == 0
    enqueues = frozenset({("route", "/enqueue/<queue_type>/<queue_id>/"), ("code", "201")})
    assert found[("sharqd_http_requests_total", enqueues)] == 3
    assert ("sharqd_longpoll_waiters", frozenset()) in found
    assert ("process_resident_memory_bytes", frozenset()) in found
    assert "user1" not in body.decode()


@pytest.mark.slow
def test_prometheus_without_redis(tmp_path):
    """When Redis is down, a scrape still answers in bounded time with the
    process's metrics, its Redis errors counted and sharqd_redis_up 0."""
    redis = RedisServer().start()
    server = Sharqd(str(tmp_path), redis).start()
    try:
        assert samples(get(server, "/prometheus")[2].decode())[
            ("sharqd_redis_up", frozenset())] == 1
        redis.stop()
        started = time.monotonic()
        status, _, body = get(server, "/prometheus")
        assert time.monotonic() - started < 3  # [redis] timeout 1 s, + 1 s
        found = samples(body.decode())
        assert status == 200 and found[("sharqd_redis_up", frozenset())] == 0
        assert sum(v for (name, _), v in found.items()
                   if name == "sharqd_redis_errors_total") >= 1
        assert not any(name == "sharqd_jobs_pending" for name, _ in found)
    finally:
        server.stop(signal.SIGKILL)
        redis.cleanup()


@pytest.mark.slow
def test_prometheus_snapshot_and_fresh(server):
    """When the figures change after the first scrape (read at once), the
    next scrape shows the snapshot with its age, ?fresh=1 the current
    figures, and a bad `fresh` is a 400 in JSON."""
    sms = frozenset({("queue_type", "sms")})
    server.request("POST", "/enqueue/sms/u1/", {"job_id": "a", "interval": 0, "payload": {}})
    first_sent = time.monotonic()
    first = samples(get(server, "/prometheus")[2].decode())
    first_answered = time.monotonic()
    assert first[("sharqd_jobs_pending", sms)] == 1
    server.request("POST", "/enqueue/sms/u1/", {"job_id": "b", "interval": 0, "payload": {}})
    second_sent = time.monotonic()
    found = samples(get(server, "/prometheus")[2].decode())
    second_answered = time.monotonic()
    assert found[("sharqd_jobs_pending", sms)] == 1
    # read during the first scrape: as old as the time between the two
    age = found[("sharqd_redis_figures_age_seconds", frozenset())]
    assert second_sent - first_answered - 0.001 <= age <= second_answered - first_sent + 0.001
    found = samples(get(server, "/prometheus?fresh=1")[2].decode())
    assert found[("sharqd_jobs_pending", sms)] == 2
    status, body, _ = server.request("GET", "/prometheus?fresh=yes")
    assert status == 400 and body["message"] == "`fresh` has an invalid value."


@pytest.mark.slow
def test_prometheus_openmetrics_when_asked(server):
    """When the scraper asks for OpenMetrics, it gets that format."""
    _, content_type, body = get(server, "/prometheus",
                                {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")




@pytest.mark.slow
def test_prometheus_gzip_when_asked(server):
    """When the scraper takes gzip (as Prometheus does), the answer is one
    gzip member holding the same figures as the plain answer, in the text
    format and in OpenMetrics; gzip;q=0 gets the plain answer."""
    for i in range(3):
        server.request("POST", f"/enqueue/sms/user{i}/",
                       {"job_id": f"j{i}", "interval": 0, "payload": {}})
    for accept in ("", "application/openmetrics-text; version=1.0.0"):
        _, plain_headers, plain = answer(server, "/prometheus", {"Accept": accept})
        for _ in range(2):  # the second deflates only what it adds to the snapshot's
            _, headers, body = answer(server, "/prometheus",
                                      {"Accept": accept, "Accept-Encoding": "gzip"})
            assert headers["content-encoding"] == "gzip"
            assert headers["vary"] == "Accept-Encoding"
            assert headers["content-type"] == plain_headers["content-type"]
            assert len(body) < len(plain) / 3
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            text = inflater.decompress(body)
            assert inflater.eof and inflater.unused_data == b""  # one member, whole
            assert text.endswith(b"# EOF\n") == bool(accept)
            found, expected = samples(text.decode()), samples(plain.decode())
            mine = ("sharqd_jobs", "sharqd_queues", "sharqd_dead", "sharqd_enqueue")
            assert {k: v for k, v in found.items() if k[0].startswith(mine)} == \
                {k: v for k, v in expected.items() if k[0].startswith(mine)}
            assert found[("sharqd_jobs_pending", frozenset({("queue_type", "sms")}))] == 3
    _, headers, body = answer(server, "/prometheus", {"Accept-Encoding": "gzip;q=0"})
    assert headers["content-encoding"] is None and body.startswith(b"# HELP")


@pytest.mark.slow
def test_workers_all_in_one_scrape(tmp_path):
    """When sharqd runs 2 workers, every scrape holds both processes' own
    metrics, labelled worker 1 and 2, whichever process took it."""
    server = Sharqd(str(tmp_path), shared_redis(), extra_server="workers : 2").start()

    def workers():
        text = get(server, "/prometheus")[2].decode()
        return {s.labels.get("worker") for family in text_string_to_metric_families(text)
                for s in family.samples if s.name == "process_resident_memory_bytes"}

    try:
        wait_for(lambda: workers() == {"1", "2"}, timeout=20)  # the second starts a moment later
        for _ in range(10):  # either process may take a scrape
            assert workers() == {"1", "2"}
    finally:
        server.stop()  # SIGTERM: the parent stops the workers, removes the sockets


@pytest.mark.slow
def test_dashboard_read_routes(server):
    """When the dashboard's read routes are asked, they answer the type's
    figures, the busiest queues and the server's health."""
    for qid, n in (("a", 1), ("b", 3)):
        for j in range(n):
            server.request("POST", f"/enqueue/sms/{qid}/",
                           {"job_id": f"j{j}", "interval": 1000, "payload": {}})
    status, body, _ = server.request("GET", "/queues/")
    assert status == 200
    (sms,) = body["queue_types"]
    assert (sms["queue_type"], sms["pending"], sms["active"]) == ("sms", 4, 0)
    status, body, _ = server.request("GET", "/queues/sms/?sort=pending&limit=1")
    assert status == 200
    assert [(q["queue_id"], q["pending"], q["interval"]) for q in body["queues"]] == [
        ("b", 3, 1000)]
    assert server.request("GET", "/queues/sms/?sort=age")[:2] == (
        400, {"status": "failure", "message": "`sort` has an invalid value."})
    status, body, _ = server.request("GET", "/health/")
    assert (status, body["workers"], body["redis"]["reachable"]) == (200, 1, True)
    assert re.fullmatch(r"\d+\.\d+\.\d+", body["redis"]["version"])


@pytest.mark.slow
def test_dashboard_files(server):
    """When /dashboard/ is opened, the page and its files come from the
    package with their content types; an unknown file is a JSON 404."""
    status, content_type, page = get(server, "/dashboard/")
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    assert b"dashboard.js" in page
    assert get(server, "/dashboard/dashboard.js")[1].startswith("text/javascript")
    assert get(server, "/dashboard/dashboard.css")[1].startswith("text/css")
    status, body, _ = server.request("GET", "/dashboard/nothing.js")
    assert (status, body["status"]) == (404, "failure")


# ---- the OpenAPI document

@pytest.mark.slow
def test_openapi_document_is_valid(server):
    """When /openapi.json is fetched, it is the package's document and a
    valid OpenAPI 3.1 document."""
    status, content_type, body = get(server, "/openapi.json")
    assert (status, content_type) == (200, "application/json")
    document = json.loads(body)
    assert document == json.loads(json.dumps(DOCUMENT))
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_openapi_has_every_route_and_no_other():
    """Every route the server answers is in the document with its methods,
    and every path and method of the document is a route of the server."""
    served = set()
    for rule in Api.app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        served |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, ops in DOCUMENT["paths"].items()
                  for method in ops}
    assert served == documented


def test_openapi_path_parameters_match_paths():
    """Every {name} of a path is a documented path parameter and back."""
    for path, ops in DOCUMENT["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for op in ops.values():
            params = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert params == names, path
