"""
The long-poll waiters' timer logic, with task.Clock and a queue whose
answers the test gives by hand (the real queue is tested on Redis).
"""

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sharqd.errors import RedisUnavailable, ShuttingDown
from sharqd.queue.waiters import Waiters


class HandQueue:
    """dequeue_many answers whatever the test says, when it says so."""

    def __init__(self):
        self.calls = []  # (queue_type, count, lease, Deferred)

    def dequeue_many(self, queue_type, count, lease=None):
        d = Deferred()
        self.calls.append((queue_type, count, lease, d))
        return d

    def answer(self, jobs=(), next_ms=None):
        """Answer the oldest unanswered call."""
        for call in self.calls:
            if not call[3].called:
                call[3].callback((list(jobs), next_ms))
                return
        raise AssertionError("no call waits for an answer")

    def fail(self, error):
        for call in self.calls:
            if not call[3].called:
                call[3].errback(error)
                return
        raise AssertionError("no call waits for an answer")

    @property
    def pending(self):
        return sum(1 for call in self.calls if not call[3].called)


class WaitersTests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.queue = HandQueue()
        self.waiters = Waiters(self.queue, self.clock, fallback=1.0)
        self.waiters.subscribed(True)

    def wait(self, timeout=30, count=1, lease=None, queue_type="sms"):
        results = []
        d = self.waiters.wait(queue_type, count, lease, timeout)
        d.addBoth(results.append)
        return d, results

    def test_first_waiter_tries_at_once(self):
        """When the first waiter of a type arrives, one dequeue is tried for
        it, and a job found is its answer."""
        _, got = self.wait(count=3, lease=500)
        self.assertEqual([c[:3] for c in self.queue.calls], [("sms", 3, 500)])
        self.queue.answer(["job"])
        self.assertEqual(got, [["job"]])
        self.assertEqual(self.waiters.waiting(), 0)

    def test_nothing_pending_means_no_polling_then_404(self):
        """When nothing is pending and notifications are live, the waiter
        sleeps without re-checking and gets [] when its time runs out."""
        _, got = self.wait(timeout=30)
        self.queue.answer([], None)
        self.clock.advance(29.9)
        self.assertEqual((len(self.queue.calls), got), (1, []))
        self.clock.advance(0.1)
        self.assertEqual(got, [[]])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sleeps_until_the_next_ready_time(self):
        """When the attempt says the next queue is ready in 500 ms, the next
        attempt comes exactly then."""
        self.wait()
        self.queue.answer([], 500)
        self.clock.advance(0.499)
        self.assertEqual(len(self.queue.calls), 1)
        self.clock.advance(0.001)
        self.assertEqual(len(self.queue.calls), 2)

    def test_notification_wakes_the_type(self):
        """When a notification for the type arrives, the waiters try at once;
        other types' notifications are ignored."""
        self.wait()
        self.queue.answer([], None)
        self.waiters.notify("email")
        self.assertEqual(len(self.queue.calls), 1)
        self.waiters.notify("sms")
        self.assertEqual(len(self.queue.calls), 2)

    def test_without_notifications_recheck_every_fallback(self):
        """When the subscription is down, waiters re-check every second even
        with nothing pending, and sooner if the next ready time is sooner."""
        self.waiters.subscribed(False)
        self.wait()
        self.queue.answer([], None)
        self.clock.advance(1.0)
        self.assertEqual(len(self.queue.calls), 2)
        self.queue.answer([], 300)
        self.clock.advance(0.3)
        self.assertEqual(len(self.queue.calls), 3)
        self.queue.answer([], 5000)
        self.clock.advance(1.0)
        self.assertEqual(len(self.queue.calls), 4)

    def test_subscription_back_rechecks_every_type(self):
        """When the subscription comes back, each waiting type re-checks
        once, since notifications may have been missed."""
        self.wait(queue_type="sms")
        self.wait(queue_type="email")
        self.queue.answer([], None)
        self.queue.answer([], None)
        self.waiters.subscribed(False)
        self.queue.answer([], None)
        self.queue.answer([], None)
        self.waiters.subscribed(True)
        self.assertEqual(self.queue.pending, 2)

    def test_first_come_first_served(self):
        """When several wait, each job goes to the oldest waiter, and after a
        job is handed out the next waiter tries at once."""
        _, first = self.wait()
        _, second = self.wait()
        _, third = self.wait()
        self.assertEqual(len(self.queue.calls), 1)  # newcomers don't try
        self.queue.answer([], None)
        self.waiters.notify("sms")
        self.queue.answer(["j1"])
        self.assertEqual((first, second, third), ([["j1"]], [], []))
        self.queue.answer(["j2"])
        self.assertEqual((second, third), ([["j2"]], []))
        self.queue.answer([], None)
        self.assertEqual(self.queue.pending, 0)

    def test_one_call_serves_the_waiters_in_front(self):
        """When several waiters with the same lease wait, one dequeue asks for
        all their counts and hands the jobs out oldest first; a waiter with
        another lease waits for the next call."""
        _, first = self.wait(count=2)
        self.queue.answer([], None)
        _, second = self.wait()
        _, third = self.wait()
        _, other = self.wait(lease=5)
        self.waiters.notify("sms")
        self.assertEqual(self.queue.calls[-1][1:3], (4, None))
        self.queue.answer(["j1", "j2", "j3"])
        self.assertEqual((first, second, third, other), ([["j1", "j2"]], [["j3"]], [], []))
        self.assertEqual(self.queue.calls[-1][1:3], (1, None))

    def test_full_answers_start_attempts_for_the_next_groups(self):
        """When 1,000 clients wait and an attempt comes back with every job
        it asked for, attempts for the next groups in line start at once, up
        to PIPELINE in flight, and every client gets its own job, oldest
        first; once one comes back short, no more start."""
        from sharqd.queue.waiters import MAX_GROUP, PIPELINE
        results = [self.wait()[1] for _ in range(1000)]
        self.queue.answer([], None)  # the first waiter's own attempt
        self.waiters.notify("sms")
        self.assertEqual(self.queue.pending, 1)
        self.queue.answer([f"j{k}" for k in range(MAX_GROUP)])
        self.assertEqual(self.queue.pending, PIPELINE)
        self.assertEqual([c[1] for c in self.queue.calls[-PIPELINE:]], [MAX_GROUP] * PIPELINE)
        for group in range(1, 10):
            self.queue.answer([f"j{k}" for k in range(group * MAX_GROUP,
                                                     (group + 1) * MAX_GROUP)])
        while self.queue.pending:
            self.queue.answer([], None)
        self.assertEqual(results, [[[f"j{k}"]] for k in range(1000)])
        self.assertEqual(self.waiters.waiting(), 0)

    def test_short_answer_stops_the_pipeline(self):
        """When an attempt comes back with fewer jobs than asked, the
        waiters it did not serve wait for the next notification."""
        from sharqd.queue.waiters import MAX_GROUP
        results = [self.wait()[1] for _ in range(2 * MAX_GROUP + 1)]
        self.queue.answer([], None)
        self.waiters.notify("sms")
        self.queue.answer([f"j{k}" for k in range(MAX_GROUP)])  # full
        self.queue.answer(["x"], None)  # short: nothing more was ready
        self.queue.answer([], None)
        self.assertEqual(self.queue.pending, 0)
        self.assertEqual(results[MAX_GROUP], [["x"]])
        self.assertEqual(self.waiters.waiting(), MAX_GROUP)
        # only their timeouts are due: no re-check before a notification
        self.assertEqual({c.getTime() for c in self.clock.getDelayedCalls()}, {30})

    def burst(self, groups):
        """groups x MAX_GROUP waiters, each noting settled() when answered,
        and the first group's jobs found: the next groups' attempts are
        in flight."""
        from sharqd.queue.waiters import MAX_GROUP
        held = []
        for _ in range(groups * MAX_GROUP):
            d, _ = self.wait()
            d.addBoth(lambda _: held.append(self.waiters.settled("sms")))
        self.queue.answer([], None)
        self.waiters.notify("sms")
        self.queue.answer([f"a{k}" for k in range(MAX_GROUP)])
        return held

    def test_settled_holds_until_the_burst_is_over(self):
        """When a full answer is handed out, settled() gives, for the clients
        answered, a Deferred that fires once no attempt of the type is in
        flight any more (the HTTP side holds their next request until
        then); with nothing in flight it is None."""
        from sharqd.queue.waiters import MAX_GROUP, RELEASE_AFTER
        self.assertIsNone(self.waiters.settled("sms"))
        held = self.burst(3)
        self.assertEqual(self.queue.pending, 2)
        first = held[0]
        self.assertEqual(set(held), {first})
        self.queue.answer([f"b{k}" for k in range(MAX_GROUP)])
        self.assertFalse(first.called)  # the third group's attempt is still out
        self.queue.answer([f"c{k}" for k in range(MAX_GROUP)])
        self.assertFalse(first.called)  # their answers are written first
        self.clock.advance(RELEASE_AFTER)
        self.assertTrue(first.called)
        self.assertEqual(set(held[MAX_GROUP:]), {first, None})
        self.assertIsNone(self.waiters.settled("sms"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_settled_holds_at_most_max_hold(self):
        """When the attempts in flight take longer than MAX_HOLD, the hold
        ends all the same."""
        from sharqd.queue.waiters import MAX_HOLD, RELEASE_AFTER
        held = self.burst(2)
        self.clock.advance(MAX_HOLD)
        self.assertFalse(held[0].called)
        self.clock.advance(RELEASE_AFTER)
        self.assertTrue(held[0].called)
        self.assertEqual(self.queue.pending, 1)

    def test_settled_fires_when_the_attempts_fail(self):
        """When the attempts a client's next request is held for fail, the
        hold ends all the same."""
        from sharqd.queue.waiters import RELEASE_AFTER
        held = self.burst(2)
        self.assertFalse(held[0].called)
        self.queue.fail(RedisUnavailable())
        self.clock.advance(RELEASE_AFTER)
        self.assertTrue(held[0].called)

    def test_one_attempt_at_a_time(self):
        """When notifications arrive while an attempt is in flight, no second
        attempt starts; one more follows when it returns empty."""
        self.wait()
        self.waiters.notify("sms")
        self.waiters.notify("sms")
        self.assertEqual(self.queue.pending, 1)
        self.queue.answer([], None)
        self.assertEqual((len(self.queue.calls), self.queue.pending), (2, 1))
        self.queue.answer([], None)
        self.assertEqual(self.queue.pending, 0)

    def test_hang_up_stops_waiting(self):
        """When a client hangs up, its wait ends and it is not served."""
        d, got = self.wait()
        _, other = self.wait()
        self.queue.answer([], None)
        d.cancel()
        self.assertTrue(got[0].check(CancelledError))
        self.waiters.notify("sms")
        self.queue.answer(["j1"])
        self.assertEqual(other, [["j1"]])

    def test_jobs_of_a_hung_up_client_go_to_the_next(self):
        """When a client hangs up while its attempt is in flight, the jobs
        found go to the next waiter that asked for as many with the same
        lease."""
        d, _ = self.wait(count=1)
        _, other_lease = self.wait(count=1, lease=99)
        _, heir = self.wait(count=2)
        d.cancel()
        self.queue.answer(["j1"])
        self.assertEqual((other_lease, heir), ([], [["j1"]]))

    def test_last_client_hanging_up_forgets_the_type(self):
        """When the last waiter of a type leaves, no timer is left behind."""
        d, _ = self.wait()
        self.queue.answer([], 5000)
        d.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.waiters.waiting("sms"), 0)

    def test_time_running_out_during_an_attempt(self):
        """When a waiter's time runs out while its attempt is in flight, it
        gets what the attempt finds rather than losing it."""
        _, got = self.wait(timeout=1)
        self.clock.advance(1)
        self.assertEqual(got, [])
        self.queue.answer(["j1"])
        self.assertEqual(got, [["j1"]])

    def test_failed_attempts_retry_then_fail(self):
        """When Redis cannot be reached, the waiter re-checks every second
        and, if its time runs out, gets the failure (a 503)."""
        _, got = self.wait(timeout=2.5)
        self.queue.fail(RedisUnavailable())
        self.clock.advance(1)
        self.assertEqual(self.queue.pending, 1)
        self.queue.fail(RedisUnavailable())
        self.clock.advance(1)
        self.assertEqual(got, [])
        self.queue.fail(RedisUnavailable())
        self.clock.advance(0.5)
        self.assertTrue(got[0].check(RedisUnavailable))

    def test_recovered_attempt_clears_the_failure(self):
        """When Redis answers again, a waiter whose time runs out gets []."""
        _, got = self.wait(timeout=2.5)
        self.queue.fail(RedisUnavailable())
        self.clock.advance(1)
        self.queue.answer([], None)
        self.clock.advance(1.5)
        self.assertEqual(got, [[]])

    def test_stopping_answers_every_waiter(self):
        """When sharqd stops, every waiter is answered at once (503
        ShuttingDown), so the HTTP side can drain; one whose dequeue is in
        flight is answered when that returns."""
        self.waiters.startService()
        _, first = self.wait()
        _, second = self.wait(queue_type="email")
        self.queue.answer([], None)  # the first's; the second's is in flight
        self.waiters.stopService()
        self.assertEqual(len(first), 1)
        self.assertIsInstance(first[0].value, ShuttingDown)
        self.assertEqual(second, [])
        self.queue.answer([], None)
        self.assertIsInstance(second[0].value, ShuttingDown)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopping_hands_out_jobs_taken_in_flight(self):
        """When sharqd stops while a waiter's dequeue is in flight and that
        dequeue takes a job, the waiter gets the job, not an error."""
        self.waiters.startService()
        _, got = self.wait()
        self.waiters.stopService()
        self.queue.answer(["job"], None)
        self.assertEqual(got, [["job"]])

    def test_after_stopping_nobody_waits(self):
        """When sharqd is stopping, a new waiting request gets one plain
        dequeue attempt and its answer, without waiting."""
        self.waiters.startService()
        self.waiters.stopService()
        _, got = self.wait(timeout=30)
        self.queue.answer([], None)
        self.assertEqual(got, [[]])
        self.assertEqual(self.clock.getDelayedCalls(), [])
