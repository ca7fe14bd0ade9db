#!/usr/bin/env python3
"""
The cost of a /prometheus scrape: a sharqd of this tree on a redis-server of
its own, filled straight in Redis with QUEUES queues over TYPES queue types
(one pending job each), then

1. the time of a scrape (GET /prometheus, answered from the snapshot of the
   figures), of GET /prometheus?fresh=1 (the figures read at once, as the
   first scrape does) and of GET /queues/ (median of `--scrapes`), and the
   longest single Redis call a scrape made (SLOWLOG);
2. the latency of sequential enqueues over HTTP (keep-alive) without
   scrapes (the baseline), as long again while another process scrapes
   every `--every` seconds, and as long again while it GETs `--control`
   (/deepstatus/: a request that costs sharqd as little as any, and
   whose enqueues it meets wait for it all the same) as often, in
   `--blocks` rounds of a block of each (each round begins one kind
   later, so that what else the machine does falls on all alike); the
   enqueues of each scraped kind in three groups: those that overlapped
   a GET, those that overlapped the background read of the figures that
   a scrape starts for the next one (its window is learnt from the next
   scrape's sharqd_redis_figures_age_seconds and
   sharqd_redis_figures_read_seconds), and the others; and the time the
   enqueues that overlapped a GET took over the baseline's median, added
   up, the median GET's (what a GET costs the enqueues in all);
3. whether each is within the noise of the baseline.  All the enqueues
   with scrapes by a paired permutation test (`paired`): the means of
   their blocks' p50 and p99 set against those of every way of swapping
   the scraped and the baseline block of a round; the two groups by
   their p50 and p99 set against those of `--resamples` sets of baseline
   enqueues gathered over windows as long and as many as the group's
   (placed at random in the baseline blocks).  "within noise" when both
   lie under the 95th percentile of the permuted or resampled ones;
4. the scrape against the control by the same paired test: all the
   enqueues with scrapes, and those during a GET.  With the first check
   of 3., those are the floor: the enqueues that meet a GET wait for it
   as they would for any request (set against the baseline, the
   enqueues during a GET of /deepstatus/ are above the noise too), so
   what a scrape must not add is a delay beyond that.  With `--runs N`
   the enqueue phases are run N times on the same server (a permutation
   test over each run's `--blocks` rounds: 5 can say "above" only when
   every round does, 10 give 1,024 ways).

Scrapes take gzip, as Prometheus does (`--gzip 0`: plain).  The scraping
process runs at nice 19 (`--scraper-nice`): it stands in for
Prometheus on another host, and on a 2-core machine its own CPU would
otherwise delay the enqueues during scrapes whatever sharqd does (with a
scrape of 1 type, 4 ms: p50 0.93 ms during scrapes against 0.40 between).

Run for 1,000 types x 100 queues and for 1 type x 100,000 queues:

    .venv/bin/python bench/scrape.py [--types 1000] [--queues 100000] [--every 2]

Prints one line per figure and a JSON line for scripts.
"""

import argparse
import http.client
import itertools
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from bisect import bisect_left
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]
from servers import RedisServer, free_port  # noqa: E402

from sharqd.queue.operations import SCRIPTS  # noqa: E402

PREFIX = "scrape"
WIRE = {}  # path -> bytes of its last answer on the wire
BATCH = 1000
PERMUTATIONS = 4096  # at most, in a paired permutation test


def fill(redis, types, queues):
    """queues queues spread over types types, one pending job each."""
    script = SCRIPTS["enqueuebatch"]
    redis.call(b"SCRIPT", b"LOAD", script.source)
    per_type = queues // types
    commands = []
    for t in range(types):
        qtype = f"type{t:04d}"
        for start in range(0, per_type, BATCH):
            ids = range(start, min(per_type, start + BATCH))
            fields = "".join(f"q{i} j{i} 1000 -1 - " for i in ids)
            commands.append((b"EVALSHA", script.sha, 0, f"{PREFIX}:{{{qtype}}}", PREFIX,
                             qtype, "", fields, *[b"{}"] * len(ids)))
    # sharqd registers a type before its first enqueue (the registry feeds
    # /metrics/, /prometheus and the requeue pass); the scripts do not
    now = int(time.time())
    commands += [(b"ZADD", f"{PREFIX}:registry", now, f"type{t:04d}") for t in range(types)]
    errors = [r for r in redis.pipeline(commands, chunk=50) if isinstance(r, Exception)]
    if errors:
        raise SystemExit(f"filling Redis failed: {errors[0]}")


def start_sharqd(tmp, redis_port):
    port = free_port()
    conf = tmp / "sharqd.conf"
    conf.write_text(
        "[sharq]\njob_expire_interval : 60000\njob_requeue_interval : 1000\n"
        f"[sharq-server]\nhost : 127.0.0.1\nport : {port}\n"
        f"[redis]\nhost : 127.0.0.1\nport : {redis_port}\nkey_prefix : {PREFIX}\n"
        "timeout : 10\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = open(tmp / "sharqd.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "sharq", "-c", str(conf)],
        cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/deepstatus/")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"sharqd did not start; see {tmp}/sharqd.log")


def process_cpu(pid):
    """CPU seconds (user + system) a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_get(conn, path, gzip=False):
    """(seconds, body) of a GET; with gzip, asking for it as Prometheus
    does, the body inflated (its size on the wire in WIRE[path])."""
    started = time.perf_counter()
    conn.request("GET", path, headers={"Accept-Encoding": "gzip"} if gzip else {})
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, (path, response.status, body[:200])
    took = time.perf_counter() - started
    WIRE[path] = len(body)
    if response.getheader("content-encoding") == "gzip":
        body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
    return took, body


def enqueue_latencies(port, seconds, tag):
    """[(seconds, start)] of sequential enqueues (start on the monotonic
    clock, which every process shares)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out, i = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        i += 1
        body = json.dumps({"job_id": f"{tag}{i}", "interval": 0, "payload": {}})
        at = time.monotonic()
        started = time.perf_counter()
        conn.request("POST", f"/enqueue/latency/q{i % 100}/", body=body)
        response = conn.getresponse()
        response.read()
        out.append((time.perf_counter() - started, at))
    return out


def gauge(body, name):
    """The value of an unlabelled sample of an exposition, or None."""
    at = body.find(b"\n" + name.encode() + b" ")
    if at < 0:
        return None
    return float(body[at + len(name) + 2:body.index(b"\n", at + 1)])


def scrape_loop(port, every, commands, nice, idle, gzip):
    """At each ("start", path) through the pipe commands, GET path every
    `every` s until "stop"; then send back, on the monotonic clock, the
    (start, end) of each GET and of each background read of the figures
    that the scrapes showed (the read the last GET started is not known:
    its window is after the last GET's start).  One process for every
    block, forked before the first: the copy-on-write faults that follow
    a fork slowed the enqueuing parent at each block's first GET.  "exit"
    ends it."""
    # The scraper stands in for Prometheus, which runs on another host: at
    # nice 19 its own CPU (reading 700 kB in Python) does not take a core
    # from the enqueuer, sharqd or Redis on a small machine, which would
    # show as a delay of the enqueues during scrapes even for a scrape
    # that costs sharqd nothing
    os.nice(nice)
    if idle:  # runs only on a core nothing else wants, and yields it at once
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    def scrape(conn, path, first, reads):
        started = time.monotonic()
        _, body = timed_get(conn, path, gzip)
        age = gauge(body, "sharqd_redis_figures_age_seconds")
        took = gauge(body, "sharqd_redis_figures_read_seconds")
        # a read made in the background (not at once for this GET): its
        # window, from when it began (age, measured as the GET came)
        begun = None if age is None else started - age
        if age is not None and age - took > 0.01 and begun > first and (
                not reads or begun > reads[-1][0] + 0.05):  # a read seen twice
            reads.append((begun, begun + took))
        return started, time.monotonic()
    while (command := commands.recv()) != "exit":
        path = command[1]
        # a connection a block: sharqd closes one idle for 60 s, as the
        # scraper's is between two blocks of its kind at a slow pace
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        gets, reads = [], []
        first = time.monotonic()  # reads that began before are not this block's
        while True:
            gets.append(scrape(conn, path, first, reads))
            if commands.poll(every):
                commands.recv()  # "stop"
                break
        conn.close()
        commands.send((gets, reads))


def split(latencies, spans):
    """The enqueues (seconds, start) that overlapped one of the spans
    (sorted (start, end) pairs, none overlapping another), and the others."""
    ends = [e for _, e in spans]
    inside, outside = [], []
    for took, at in latencies:
        i = bisect_left(ends, at)
        hit = i < len(spans) and spans[i][0] <= at + took
        (inside if hit else outside).append((took, at))
    return inside, outside


def extra_per_span(latencies, spans, typical):
    """For each span, the seconds the enqueues that overlapped it took over
    typical, added up."""
    ends = [e for _, e in spans]
    extra = [0.0] * len(spans)
    for took, at in latencies:
        i = bisect_left(ends, at)
        if i < len(spans) and spans[i][0] <= at + took:
            extra[i] += took - typical
    return extra


def within_noise(group, spans, baseline, resamples, seed=1):
    """Set the p50 and p99 of a group of enqueues (the latencies of those
    that overlapped spans) against those of sets of baseline enqueues
    gathered over windows as long and as many as the spans, placed at
    random in the baseline run.  Returns the figures and the verdict."""
    baseline = _joined(sorted((at, took) for took, at in baseline))
    starts = [at for at, _ in baseline]
    margin = max(took for _, took in baseline)
    first, last = starts[0], starts[-1]
    rng = random.Random(seed)
    p50s, p99s = [], []
    for _ in range(resamples):
        sample = []
        for start, end in spans:
            length = end - start
            if length >= last - first:
                continue
            at = rng.uniform(first, last - length)
            lo = bisect_left(starts, at - margin)
            sample += [took for s, took in baseline[lo:bisect_left(starts, at + length)]
                       if s + took >= at]
        if len(sample) >= 100:
            s = summary(sample)
            p50s.append(s["p50_ms"])
            p99s.append(s["p99_ms"])
    d = summary(group)
    return _ranked(d["p50_ms"], d["p99_ms"], d["n"], p50s, p99s)


def paired(ours, theirs, statistic, seed=1):
    """A paired permutation test over the rounds of a run: statistic(items)
    -> (p50, p99, n) of our item of each round (a block's, or its GETs')
    set against the same of every way of swapping ours and theirs within
    rounds (2^rounds; PERMUTATIONS drawn at random beyond).  A swap keeps
    each round's two blocks, made one after the other, together: how fast
    the machine is drifts from block to block by more than the
    enqueues within a block vary, and a test that takes those as the
    noise finds even two kinds of block that differ in nothing apart."""
    rounds = len(ours)
    if 2 ** rounds <= PERMUTATIONS:
        swaps = itertools.product((False, True), repeat=rounds)
    else:
        rng = random.Random(seed)
        swaps = ([rng.random() < 0.5 for _ in range(rounds)] for _ in range(PERMUTATIONS))
    values = [statistic([t if swap else o for o, t, swap in zip(ours, theirs, swapped)])
              for swapped in swaps]
    p50, p99, n = statistic(ours)
    return _ranked(p50, p99, n, [v[0] for v in values], [v[1] for v in values])


def block_means(blocks):
    """(p50, p99, n) of blocks given as summaries: their p50s' and p99s'
    means, the enqueues of all."""
    return (round(statistics.mean(b["p50_ms"] for b in blocks), 3),
            round(statistics.mean(b["p99_ms"] for b in blocks), 3),
            sum(b["n"] for b in blocks))


def pooled(groups):
    """(p50, p99, n) of lists of latencies taken together."""
    d = summary([t for g in groups for t in g])
    return d["p50_ms"], d["p99_ms"], d["n"]


def _ranked(p50, p99, n, p50s, p99s):
    """A p50 and a p99 against those of resampled sets (or permutations):
    "within noise" when both lie under the 95th percentile of the sets'."""
    if not p50s or not n:
        return {"p50_ms": p50, "p99_ms": p99, "n": n, "resamples": 0, "within_noise": None}
    p50s, p99s = sorted(p50s), sorted(p99s)

    def rank(value, values):  # share of resampled values below value
        return round(bisect_left(values, value) / len(values), 3)
    top = int(len(p50s) * 0.95)
    result = {"p50_ms": p50, "p99_ms": p99, "n": n,
              "resampled_p50_ms_median_p95": [p50s[len(p50s) // 2], p50s[top]],
              "resampled_p99_ms_median_p95": [p99s[len(p99s) // 2], p99s[top]],
              "p50_rank": rank(p50, p50s), "p99_rank": rank(p99, p99s),
              "resamples": len(p50s)}
    result["within_noise"] = p50 <= p50s[top] and p99 <= p99s[top]
    return result


def _joined(baseline, gap=1.0):
    """Sorted (start, seconds) of enqueues made in blocks, with the time
    between blocks (gaps over `gap` s) taken out: one timeline, on which a
    window placed at random always falls among baseline enqueues."""
    out, shift, last = [], 0.0, None
    for at, took in baseline:
        if last is not None and at - last > gap:
            shift += at - last
        last = at
        out.append((at - shift, took))
    return out


def summary(latencies):
    if not latencies:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = sorted(x * 1000 for x in latencies)
    return {"n": len(ms), "p50_ms": round(ms[len(ms) // 2], 3),
            "p99_ms": round(ms[int(len(ms) * 0.99)], 3), "max_ms": round(ms[-1], 3)}


def enqueue_run(port, args, tag):
    """args.blocks rounds of blocks of enqueues, args.seconds / args.blocks
    each: one alone (the baseline), one while another process GETs
    args.path every args.every s and, with args.control, one while it GETs
    that instead (a request that costs sharqd as little as any).  Each
    round begins one block later than the one before: what else the
    machine does falls on every kind alike.  The enqueues of each scraped
    kind in groups, each group's noise check against the baseline, and
    the scrape's against the control's."""
    block = args.seconds / args.blocks
    kinds = [None, args.path] + ([args.control] if args.control else [])
    baseline, scraped = [], {path: Scraped() for path in kinds[1:]}
    commands, theirs = multiprocessing.Pipe()
    scraper = multiprocessing.Process(target=scrape_loop,
                                      args=(port, args.every, theirs,
                                            args.scraper_nice, args.scraper_idle,
                                            args.gzip))
    scraper.start()
    time.sleep(1)  # the fork's copy-on-write faults over before the first block
    for b in range(args.blocks):
        turn = b % len(kinds)
        for i, path in enumerate(kinds[turn:] + kinds[:turn]):
            name = f"{tag}b{b}k{i}-"
            if path is None:
                baseline.append(enqueue_latencies(port, block, name))
            else:
                scraped[path].block(port, commands, path, block, args.every, name)
    commands.send("exit")
    scraper.join()
    scrape = scraped[args.path]
    figures = scrape.figures(baseline, args.resamples)
    figures["blocks"] = args.blocks
    figures["enqueue_baseline"] = summary([t for b in baseline for t, _ in b])
    if args.control:
        control = scraped[args.control]
        figures["control"] = dict(path=args.control, **control.figures(baseline, args.resamples))
        figures["noise_all_vs_control"] = paired(
            scrape.summaries(), control.summaries(), block_means)
        figures["noise_get_vs_control"] = paired(
            scrape.during_gets(), control.during_gets(), pooled)
    return figures


class Scraped:
    """The blocks of enqueues made while one path was scraped: for each,
    its enqueues, GETs and background reads."""

    def __init__(self):
        self.blocks = []

    def block(self, port, commands, path, seconds, every, tag):
        commands.send(("start", path))
        enqueues = enqueue_latencies(port, seconds, tag)
        commands.send("stop")
        gets, reads = commands.recv()
        # the background read the last GET started, whose window no GET
        # showed: the enqueues from that GET on are in no group, and the
        # next block waits for that read to end
        last = gets[-1][0]
        kept = [(took, at) for took, at in enqueues if at + took < last]
        self.blocks.append((kept, gets[:-1], reads))
        enqueue_latencies(port, every, tag + "after-")

    def summaries(self):
        return [summary([t for t, _ in kept]) for kept, _, _ in self.blocks]

    def during_gets(self):
        """The seconds of the enqueues that overlapped a GET, a list a block."""
        return [[t for t, _ in split(kept, gets)[0]] for kept, gets, _ in self.blocks]

    def figures(self, baseline, resamples):
        enqueues = [e for kept, _, _ in self.blocks for e in kept]
        gets = [g for _, block_gets, _ in self.blocks for g in block_gets]
        reads = [r for _, _, block_reads in self.blocks for r in block_reads]
        during_get, rest = split(enqueues, gets)
        during_read, neither = split(rest, reads)
        during_get = [t for t, _ in during_get]
        during_read = [t for t, _ in during_read]
        joined = [e for b in baseline for e in b]
        typical = statistics.median(t for t, _ in joined)
        figures = {
            "scrapes": len(gets),
            "scrape_s_median_under_load": round(statistics.median(b - a for a, b in gets), 4),
            # what a GET costs the enqueues: the time those that overlapped
            # it took over the baseline's median, added up (the median GET's:
            # one enqueue that waited 50 ms for something else weighs nothing)
            "extra_enqueue_ms_per_get": round(
                1000 * statistics.median(extra_per_span(enqueues, gets, typical)), 3),
            "background_reads": len(reads),
            "background_read_s_median": (round(statistics.median(b - a for a, b in reads), 3)
                                         if reads else None),
            "enqueue_during_get": summary(during_get),
            "enqueue_during_background_read": summary(during_read),
            "enqueue_during_neither": summary([t for t, _ in neither]),
            "enqueue_with_scrapes_all": summary([t for t, _ in enqueues]),
            "noise_all": paired(self.summaries(),
                                [summary([t for t, _ in b]) for b in baseline], block_means),
            "noise_get": within_noise(during_get, gets, joined, resamples),
        }
        if reads:
            figures["noise_background_read"] = within_noise(during_read, reads, joined,
                                                            resamples)
        return figures


SWAPS = "ways of swapping its blocks round by round"


def print_scraped(path, figures):
    print(f"{path}: {figures['scrapes']} GETs ({figures['scrape_s_median_under_load']} s), "
          f"{figures['extra_enqueue_ms_per_get']} ms of extra enqueue time a GET, "
          f"{figures['background_reads']} background reads "
          f"({figures['background_read_s_median']} s)")
    for key in ("enqueue_during_get", "enqueue_during_background_read",
                "enqueue_during_neither", "enqueue_with_scrapes_all"):
        print(f"  {key}: {figures[key]}")
    print(noise_line("all with scrapes (means of the blocks')", figures["noise_all"],
                     SWAPS + " with the baseline's"))
    print(noise_line("during GET", figures["noise_get"]))
    if "noise_background_read" in figures:
        print(noise_line("during background read", figures["noise_background_read"]))


def noise_line(name, noise, sets="resampled sets of baseline enqueues"):
    if noise["within_noise"] is None:
        return f"  {name}: {noise['n']} enqueues, too few to compare"
    return (f"  {name}: p50 {noise['p50_ms']} ms (rank {noise['p50_rank']}), "
            f"p99 {noise['p99_ms']} ms (rank {noise['p99_rank']}), n {noise['n']}, against "
            f"{noise['resamples']} {sets}: p50 median/95th "
            f"{noise['resampled_p50_ms_median_p95']}, p99 median/95th "
            f"{noise['resampled_p99_ms_median_p95']} ms: "
            + ("within noise" if noise["within_noise"] else "ABOVE noise"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", type=int, default=1000)
    parser.add_argument("--queues", type=int, default=100000)
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=60,
                        help="seconds of enqueues of each kind a run makes")
    parser.add_argument("--every", type=float, default=2.0,
                        help="seconds between scrapes while enqueuing (0: back to back)")
    parser.add_argument("--scraper-nice", type=int, default=19,
                        help="niceness of the scraping process (0: as the others)")
    parser.add_argument("--scraper-idle", type=int, default=1,
                        help="1: the scraping process runs under SCHED_IDLE (0: nice only)")
    parser.add_argument("--gzip", type=int, default=1,
                        help="1: scrapes take gzip, as Prometheus does (0: plain)")
    parser.add_argument("--path", default="/prometheus",
                        help="what the scraper GETs")
    parser.add_argument("--control", default="/deepstatus/",
                        help="what the scraper GETs in the control blocks: a request "
                             "that costs sharqd as little as any ('' for none)")
    parser.add_argument("--blocks", type=int, default=10,
                        help="rounds of blocks (enqueues alone, with scrapes, with the "
                             "control's GETs) a run makes, seconds / blocks each")
    parser.add_argument("--runs", type=int, default=1,
                        help="times the enqueue phases are run on the same server")
    parser.add_argument("--resamples", type=int, default=1000,
                        help="resampled sets of enqueues between scrapes (noise)")
    args = parser.parse_args()
    if args.seconds / args.blocks < 2 * args.every:
        parser.error("a block (--seconds / --blocks) must last two --every at least: "
                     "the enqueues from a block's last GET on are left out")
    tmp = Path(tempfile.mkdtemp(prefix="sharqd-scrape-"))
    redis = RedisServer(shutil.which("redis-server") or "/usr/bin/redis-server", tmp)
    proc = None
    try:
        fill(redis.client, args.types, args.queues)
        proc, port = start_sharqd(tmp, redis.port)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        redis.client.call(b"CONFIG", b"SET", b"slowlog-log-slower-than", b"0")
        redis.client.call(b"SLOWLOG", b"RESET")
        # the first scrape reads the figures at once; the others answer
        # from the snapshot (each starts the next background read)
        first = timed_get(conn, "/prometheus", args.gzip)[0]
        scrapes = [timed_get(conn, "/prometheus", args.gzip) for _ in range(args.scrapes)]
        # the figures read at once, as the first scrape of a process does
        cpu = process_cpu(proc.pid)
        fresh = [timed_get(conn, "/prometheus?fresh=1") for _ in range(args.scrapes)]
        cpu_per_fresh = (process_cpu(proc.pid) - cpu) / args.scrapes
        log = redis.client.call(b"SLOWLOG", b"GET", b"-1")
        longest = max(int(entry[2]) for entry in log
                      if entry[3][0].upper() in (b"FCALL", b"EVALSHA", b"EVAL"))
        redis.client.call(b"CONFIG", b"SET", b"slowlog-log-slower-than", b"10000")
        queues = [timed_get(conn, "/queues/")[0] for _ in range(args.scrapes)]
        text = fresh[-1][1].decode()
        pending = sum(float(line.split()[-1]) for line in text.splitlines()
                      if line.startswith("sharqd_jobs_pending{"))
        assert pending == args.queues // args.types * args.types, pending

        result = {
            "types": args.types, "queues": args.queues,
            "first_scrape_s": round(first, 3),
            "scrape_s_median": round(statistics.median(s for s, _ in scrapes), 3),
            "scrape_s_max": round(max(s for s, _ in scrapes), 3),
            "fresh_scrape_s_median": round(statistics.median(s for s, _ in fresh), 3),
            "fresh_scrape_s_max": round(max(s for s, _ in fresh), 3),
            "queues_route_s_median": round(statistics.median(queues), 3),
            "longest_redis_call_us": longest,
            "sharqd_cpu_s_per_fresh_scrape": round(cpu_per_fresh, 3),
            "scrape_bytes": len(scrapes[-1][1]),
            "scrape_wire_bytes": WIRE["/prometheus"],
            "gzip": bool(args.gzip),
            "scrape_every_s": args.every,
            "load_average": os.getloadavg()[0],
            "runs": [],
        }
        print(f"{args.types} types, {args.queues} queues: first scrape {first:.3f} s, "
              f"scrape {result['scrape_s_median']} s (max {result['scrape_s_max']} s, "
              f"{result['scrape_bytes']} bytes, {result['scrape_wire_bytes']} on the wire), "
              f"?fresh=1 {result['fresh_scrape_s_median']} s "
              f"(max {result['fresh_scrape_s_max']} s, "
              f"{result['sharqd_cpu_s_per_fresh_scrape']} s of sharqd CPU), "
              f"/queues/ {result['queues_route_s_median']} s, longest Redis call "
              f"{longest} µs; load average {result['load_average']:.2f}")
        for run in range(args.runs):
            figures = enqueue_run(port, args, f"r{run}")
            result["runs"].append(figures)
            print(f"run {run + 1} of {args.runs}: baseline {figures['enqueue_baseline']}")
            print_scraped(args.path, figures)
            if args.control:
                print_scraped(args.control, figures["control"])
                print(f"{args.path} against {args.control}:")
                print(noise_line("all with scrapes (means of the blocks')",
                                 figures["noise_all_vs_control"], SWAPS + " with the control's"))
                print(noise_line("during GET", figures["noise_get_vs_control"],
                                 SWAPS + " with the control's"))
        checks = ("noise_all", "noise_get", "noise_background_read")
        if args.control:  # the floor: no more than the control's GETs cost
            checks = ("noise_all", "noise_all_vs_control", "noise_get_vs_control")
        verdicts = [r[k]["within_noise"] for r in result["runs"] for k in checks
                    if k in r and r[k]["within_noise"] is not None]
        print(f"within noise in {sum(verdicts)} of {len(verdicts)} checks ({', '.join(checks)})")
        print(json.dumps(result))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
