"""
A worker process's loop: long-poll for jobs of one type, run the handler,
finish on success, keep the lease alive while the handler runs, stop
gracefully on SIGTERM/SIGINT.

The loop itself runs on asyncio (one long-poll at a time, for as many jobs
as there are free slots); a plain function handler runs in a thread of its
own per job, a coroutine function handler as a task on the loop.
"""

import asyncio
import inspect
import logging
import signal
import threading
import time
import traceback

from sharqd_client.client import AsyncClient
from sharqd_client.errors import NotFound, SharqdError, Unavailable

log = logging.getLogger("sharqd_client.worker")

MAX_COUNT = 100  # the server's largest ?count=
MAX_WAIT = 60  # the server's largest ?wait=


def _describe(error):
    """One line for a failed handler: the error and where it was raised."""
    where = ""
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        where = f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})"
    return f"{type(error).__name__}: {error}{where}"


def _is_async(handler):
    return inspect.iscoroutinefunction(handler) or \
        inspect.iscoroutinefunction(getattr(handler, "__call__", None))


class Worker:
    """Runs `handler(job)` for the jobs of `queue_type`.

    - `concurrency`: handlers running at once (threads for a plain
      function, tasks for an `async def` one);
    - `lease`: ms the server gives each job; while a handler runs longer
      than half of it, the worker touches the job to extend it;
    - `wait`: seconds of each long-poll (1 to 60);
    - `shutdown_timeout`: seconds a stop waits for running handlers; jobs
      still running then are not finished and come back when their lease
      ends.

    A handler that returns finishes its job; one that raises leaves it to
    expire (it is handed out again while its requeue budget lasts) and logs
    one line. `run()` blocks until stopped: by SIGTERM or SIGINT when called
    in the main thread (a second signal stops at once), or by `stop()`."""

    def __init__(self, client, queue_type, handler, concurrency=1, lease=30_000,
                 wait=20, shutdown_timeout=30.0):
        if not 1 <= wait <= MAX_WAIT:
            raise ValueError(f"wait must be 1 to {MAX_WAIT} seconds")
        if concurrency < 1 or lease < 1:
            raise ValueError("concurrency and lease must be at least 1")
        self.settings = client.settings()
        self.queue_type = queue_type
        self.handler = handler
        self.concurrency = concurrency
        self.lease = lease
        self.wait = wait
        self.shutdown_timeout = shutdown_timeout
        self.processed = 0  # jobs handled and finished
        self.failed = 0  # jobs whose handler raised
        self._loop = None
        self._stopping = None
        self._started = threading.Event()
        self._thread = None

    # ---- running and stopping

    def run(self):
        """Work until stopped; re-raises an error that stopped the worker
        (an invalid queue type, a refused token)."""
        in_main = threading.current_thread() is threading.main_thread()
        asyncio.run(self._main(in_main))

    def start(self):
        """Run in a background thread (e.g. inside another program); see stop()."""
        self._thread = threading.Thread(target=self.run, name=f"sharqd-worker-{self.queue_type}",
                                        daemon=True)
        self._thread.start()
        self._started.wait(10)
        return self

    def stop(self, now=False):
        """Ask the worker to stop (from any thread): no new dequeues; running
        handlers get `shutdown_timeout` seconds (none with now=True)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._request_stop, now)

    def join(self, timeout=None):
        if self._thread is not None:
            self._thread.join(timeout)

    def _request_stop(self, now=False):
        if self._stopping.is_set() or now:
            self._give_up = True
        self._stopping.set()
        self._slot_free.set()

    async def _main(self, handle_signals):
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._give_up = False
        self._running = set()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._request_stop)
        self._http = AsyncClient(**self.settings)
        self._started.set()
        log.info("worker for `%s` started (concurrency %d, lease %d ms)",
                 self.queue_type, self.concurrency, self.lease)
        poller = asyncio.create_task(self._poll())
        stopped = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait([poller, stopped], return_when=asyncio.FIRST_COMPLETED)
            poller.cancel()  # hangs up a long-poll: a job taken meanwhile comes back later
            await asyncio.gather(poller, return_exceptions=True)
            await self._drain()
            if not poller.cancelled() and poller.exception() is not None:
                raise poller.exception()
        finally:
            stopped.cancel()
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(sig)
            await self._http.aclose()
            log.info("worker for `%s` stopped (%d finished, %d failed)",
                     self.queue_type, self.processed, self.failed)

    async def _drain(self):
        """Wait for running handlers, up to shutdown_timeout (or a second signal)."""
        deadline = time.monotonic() + self.shutdown_timeout
        while self._running and not self._give_up and time.monotonic() < deadline:
            self._slot_free.clear()
            try:
                await asyncio.wait_for(self._slot_free.wait(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
        if self._running:
            log.warning("stopping with %d job(s) of `%s` still running: they are not "
                        "finished and come back when their lease ends",
                        len(self._running), self.queue_type)
            for task in list(self._running):
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)

    # ---- polling

    async def _poll(self):
        failures = 0
        while not self._stopping.is_set():
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                jobs = await self._http.dequeue(self.queue_type, wait=self.wait,
                                                count=min(free, MAX_COUNT), lease=self.lease)
            except Unavailable as e:
                if failures == 0:
                    log.warning("cannot dequeue `%s`, retrying: %s", self.queue_type, e)
                await asyncio.sleep(min(5.0, 0.1 * 2 ** failures))
                failures += 1
                continue
            if failures:
                log.info("dequeuing `%s` again", self.queue_type)
                failures = 0
            # a long-poll answers as soon as it takes the jobs: their leases
            # start about now (half a lease is the margin for the latency)
            received = time.monotonic()
            for job in jobs:
                task = asyncio.create_task(self._work(job, received))
                self._running.add(task)
                task.add_done_callback(self._done)

    def _done(self, task):
        self._running.discard(task)
        self._slot_free.set()

    # ---- one job

    async def _work(self, job, dequeued_at):
        keeper = asyncio.create_task(self._keep_lease(job, dequeued_at))
        try:
            if _is_async(self.handler):
                await self.handler(job)
            else:
                await self._in_thread(job)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.failed += 1
            log.error("job %s/%s/%s failed: %s", job.queue_type, job.queue_id, job.job_id,
                      _describe(e))
            return
        finally:
            keeper.cancel()
        await self._finish(job)

    async def _finish(self, job):
        try:
            await self._http.finish(job)
        except NotFound:
            log.warning("job %s/%s/%s was done but its lease had ended: it is handed "
                        "out again", job.queue_type, job.queue_id, job.job_id)
        except SharqdError as e:
            log.warning("job %s/%s/%s was done but not finished (%s): it comes back "
                        "when its lease ends", job.queue_type, job.queue_id, job.job_id, e)
        else:
            self.processed += 1

    def _in_thread(self, job):
        """Run a plain handler in a thread of its own; a future of its result.
        Daemon threads: a handler stuck past the shutdown timeout does not
        keep the process alive."""
        loop = self._loop
        future = loop.create_future()

        def settle(method, value):
            if not future.done():
                method(value)

        def target():
            try:
                result = self.handler(job)
            except BaseException as e:
                outcome = (future.set_exception, e)
            else:
                outcome = (future.set_result, result)
            try:
                loop.call_soon_threadsafe(settle, *outcome)
            except RuntimeError:  # the loop is closed: the worker gave up on us
                pass

        threading.Thread(target=target, daemon=True,
                         name=f"sharqd-job-{job.job_id}").start()
        return future

    async def _keep_lease(self, job, since):
        """Touch the job each time half of its lease has gone by."""
        half = self.lease / 2000
        while True:
            await asyncio.sleep(max(0.0, since + half - time.monotonic()))
            touched = time.monotonic()
            try:
                await self._http.touch(job, lease=self.lease)
            except NotFound:
                log.warning("job %s/%s/%s lost its lease while running: it is handed "
                            "out again", job.queue_type, job.queue_id, job.job_id)
                return
            except SharqdError as e:
                log.warning("could not extend the lease of job %s/%s/%s: %s",
                            job.queue_type, job.queue_id, job.job_id, e)
                await asyncio.sleep(min(1.0, half / 2))  # then try again
                continue
            since = touched
