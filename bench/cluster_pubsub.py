"""
Evidence for docs/redis-layout.md: what a ready notification costs on a
3-master Redis Cluster with PUBLISH (heard on every node) and SPUBLISH
(heard in the shard only), and what listing the types costs with the
registry versus a SCAN of every master.

    .venv-test/bin/python bench/cluster_pubsub.py

Prints CPU seconds of each node per 100,000 messages (from /proc), one
subscriber on a node other than the publisher's.
"""

import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
from support import RedisCluster, RedisServer, resp_command  # noqa: E402

N = 100_000


def cpu(node):
    with open(f"/proc/{node.process.pid}/stat") as f:
        fields = f.read().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def publish(cluster, command):
    masters = cluster.masters()
    publisher, listener = masters[0], masters[1]
    channel = "p:{sms}:ready" if command == "PUBLISH" else None
    if command == "SPUBLISH":  # a channel in the publisher's own slots
        channel = next(f"p:{{t{i}}}:ready" for i in range(10000)
                       if cluster.master_of(resp_command(
                           publisher.port, "CLUSTER", "KEYSLOT", f"p:{{t{i}}}:ready"))
                       is publisher)
    subscribe = "PSUBSCRIBE" if command == "PUBLISH" else "SSUBSCRIBE"
    target = listener if command == "PUBLISH" else publisher
    sub = subprocess.Popen(["redis-cli", "-p", str(target.port), subscribe,
                            "p:{*}:ready" if command == "PUBLISH" else channel],
                           stdout=subprocess.DEVNULL)
    time.sleep(0.5)  # the subscription is made (a measurement, not a test)
    before = {n.port: cpu(n) for n in cluster.running()}
    subprocess.run(["redis-benchmark", "-p", str(publisher.port), "-n", str(N), "-c", "4",
                    "-q", command, channel, "1700000000000"], check=True,
                   capture_output=True)
    time.sleep(0.5)
    after = {n.port: cpu(n) for n in cluster.running()}
    sub.terminate()
    roles = {n.port: ("publisher" if n is publisher else
                      "master" if n in masters else "replica") for n in cluster.running()}
    spent = {p: after[p] - before[p] for p in after}
    print(f"{command}: CPU s per {N} messages: publisher {spent[publisher.port]:.2f}, "
          f"other nodes {sum(v for p, v in spent.items() if p != publisher.port):.2f} "
          f"({', '.join(f'{roles[p]} {v:.2f}' for p, v in spent.items() if p != publisher.port)})")


def listing(queues=20_000):
    redis = RedisServer().start()
    try:
        script = ("for i = 1, %d do local q = 'p:{t' .. (i %% 50) .. '}:' "
                  "redis.call('SADD', q .. 'queues', i) redis.call('RPUSH', q .. 'pending:' .. i, 1) "
                  "redis.call('HSET', q .. 'payload:' .. i, 1, 1) redis.call('HSET', q .. 'meta:' .. i, 'interval', 0) "
                  "end for t = 0, 49 do redis.call('ZADD', 'p:registry', 1, 't' .. t) end" % queues)
        resp_command(redis.port, "EVAL", script, 0)
        keys = resp_command(redis.port, "DBSIZE")
        started = time.perf_counter()
        cursor, found = b"0", set()
        while True:
            cursor, batch = resp_command(redis.port, "SCAN", cursor, "MATCH", "p:{*}:queues",
                                         "COUNT", 1000)
            found.update(batch)
            if cursor == b"0":
                break
        scan = time.perf_counter() - started
        started = time.perf_counter()
        types = resp_command(redis.port, "ZRANGE", "p:registry", 0, -1)
        registry = time.perf_counter() - started
        print(f"listing 50 types among {keys} keys: SCAN {scan * 1000:.0f} ms "
              f"({len(found)} found), registry ZRANGE {registry * 1000:.2f} ms ({len(types)})")
    finally:
        redis.cleanup()


if __name__ == "__main__":
    cluster = RedisCluster().start()
    try:
        publish(cluster, "PUBLISH")
        publish(cluster, "SPUBLISH")
    finally:
        cluster.cleanup()
    listing()
