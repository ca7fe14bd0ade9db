"""
Redis Cluster: commands routed by the hash slot of the key they name, over
one command pool (connection.RedisService) per master.

The slot map comes from CLUSTER SHARDS (CLUSTER SLOTS on Redis before 7)
of any node that answers: the masters first, then the seed nodes of the
config, then the replicas last seen.  It is read at start, every
REFRESH_SECONDS, and soon after any sign that it changed (MOVED, a node that
does not answer, CLUSTERDOWN), one refresh at a time.  Redirections:

- MOVED: the slot is another node's now: noted at once, the command sent
  there, the whole map read again shortly after;
- ASK: the slot is being migrated and this key has left: ASKING and the
  command, once, on one connection of the named node.  Not for scripts
  (EVAL, EVALSHA, FCALL): a script may touch keys it does not declare, which may
  be on either node until the migration ends, so a script waits as for
  TRYAGAIN below until the slot has moved (then MOVED sends it on);
- TRYAGAIN, CLUSTERDOWN, READONLY, MASTERDOWN: a failover or a migration is
  under way: tried again after 50, 100, 200... ms while the command's time
  ([redis] timeout) lasts, then RedisUnavailable (503);
- NOSCRIPT (a promoted replica has no scripts): scripts.Script sends EVAL;
  "Function not found" (a new node): scripts.Functions sends the script
  and loads the library on every master.

A node that does not answer gives RedisUnavailable within its pool's
bounds (timeout + 1 s), as a single Redis does, and makes the map be read
again from another node: once the cluster has promoted a replica, the
slots go there.
"""

import binascii
import random
from dataclasses import replace

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

import txredisapi

from sharqd.errors import RedisUnavailable
from sharqd.redis.connection import KEEPALIVE_SECONDS, RedisRefused, RedisService, Subscription

SLOTS = 16384
REFRESH_SECONDS = 5.0
RETRIES = 12  # of TRYAGAIN and the like, within [redis] timeout
_SCRIPTS = (b"EVAL", b"EVALSHA", b"FCALL", b"FCALL_RO")
# errors that mean "the cluster is changing": retry after a short pause
_RETRY = ("TRYAGAIN", "CLUSTERDOWN", "READONLY", "MASTERDOWN", "LOADING")


def key_slot(key):
    """The hash slot of a key: CRC16 (XMODEM) of the key, or of the part
    between the first { and the next } when that part is not empty."""
    if isinstance(key, str):
        key = key.encode()
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return binascii.crc_hqx(key, 0) % SLOTS


def command_key(command):
    """The key a command names, for routing: a script's first key (EVAL,
    EVALSHA, FCALL), otherwise the first argument; None for a command
    without one."""
    name = command[0].upper() if isinstance(command[0], bytes) else command[0].upper().encode()
    if name in _SCRIPTS:
        return command[3] if int(command[2]) > 0 else None
    if name in (b"PING", b"WAIT", b"SCAN", b"CLUSTER", b"INFO", b"SCRIPT", b"FUNCTION",
                b"PUBLISH"):
        return None
    return command[1] if len(command) > 1 else None


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _host(value, asked):
    """A node's host as the map gives it; a node that does not know its
    own address (a cluster of one, never MEET) gives "" or "?": then the
    host that was asked."""
    host = _text(value or "")
    return asked if host in ("", "?") else host


def parse_shards(reply, asked=""):
    """CLUSTER SHARDS -> ({slot range: master address}, every node address);
    asked is the host the command went to."""
    ranges, nodes = {}, set()
    for shard in reply:
        fields = dict(zip(map(_text, shard[::2]), shard[1::2]))
        master, online = None, False
        for node in fields["nodes"]:
            info = dict(zip(map(_text, node[::2]), node[1::2]))
            address = (_host(info.get("ip") or info.get("endpoint"), asked), int(info["port"]))
            nodes.add(address)
            # during a failover a failed master may still be listed as one:
            # a master that is online wins
            if _text(info["role"]) == "master" and not online:
                master, online = address, _text(info.get("health", "")) == "online"
        slots = [int(s) for s in fields["slots"]]
        if master is not None:
            for start, end in zip(slots[::2], slots[1::2]):
                ranges[(start, end)] = master
    return ranges, nodes


def parse_slots(reply, asked=""):
    """CLUSTER SLOTS -> as parse_shards."""
    ranges, nodes = {}, set()
    for entry in reply:
        start, end, master = int(entry[0]), int(entry[1]), entry[2]
        address = (_host(master[0], asked), int(master[1]))
        ranges[(start, end)] = address
        nodes.add(address)
        nodes.update((_host(r[0], asked), int(r[1])) for r in entry[3:])
    return ranges, nodes


def _address(text, asked):
    """host:port of a MOVED or ASK; "" for the host means the node asked."""
    host, _, port = text.rpartition(":")
    return host or asked, int(port)


class ClusterService(Service):
    """The command side of sharqd on a Redis Cluster: execute(*command)
    like RedisService.execute, routed by command_key(command); masters()
    for the commands every master must run (SCAN, PING)."""

    log = Logger()

    def __init__(self, config, poolsize=2, reactor=None, keepalive=KEEPALIVE_SECONDS):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.poolsize = poolsize
        self.keepalive = keepalive
        self.seeds = [(config.host, config.port), *config.startup_nodes]
        self.slots = [None] * SLOTS  # slot -> master address
        self.pools = {}  # master address -> RedisService
        self.known = set(self.seeds)  # every node seen, for refreshes
        self._slots_of = {}  # key -> slot, a cache
        self._ranges = None  # the map as last read: {(start, end): address}
        self._refreshing = None
        self._soon = None
        self._mapped = []  # Deferreds waiting for the first map
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = reactor

    def describe(self):
        return "cluster " + ",".join(f"{h}:{p}" for h, p in self.seeds)

    # ---- the pools

    def pool(self, address):
        pool = self.pools.get(address)
        if pool is None:
            host, port = address
            pool = RedisService(replace(self.config, host=host, port=port),
                                poolsize=self.poolsize, reactor=self.reactor,
                                keepalive=self.keepalive)
            self.pools[address] = pool
            if self.running:
                pool.startService()
        return pool

    def masters(self):
        """The execute function of each master, in address order."""
        return [self.pool(a).execute for a in sorted(set(filter(None, self.slots)))]

    def startService(self):
        super().startService()
        for pool in self.pools.values():
            pool.startService()
        self._loop.start(REFRESH_SECONDS, now=True)

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        pools, self.pools = list(self.pools.values()), {}
        return gatherResults([p.stopService() for p in pools if p.running],
                             consumeErrors=True)

    # ---- the slot map

    def refresh_soon(self, delay=0.1):
        """Read the map again shortly (several signs, one refresh)."""
        if self._soon is None or not self._soon.active():
            if self._refreshing is None and self.running:
                self._soon = self.reactor.callLater(delay, self.refresh)

    def refresh(self):
        """Read the slot map from the first node that answers; at most one
        refresh in flight."""
        if self._refreshing is None:
            self._refreshing = Deferred.fromCoroutine(self._refresh())
            self._refreshing.addErrback(self._refresh_failed)
            self._refreshing.addBoth(self._refreshed)
        return None

    def _refreshed(self, _):
        self._refreshing = None

    def _refresh_failed(self, failure):
        self.log.warn("Could not read the Redis Cluster slot map from any of "
                      "{nodes}: {error}", nodes=sorted(self.known),
                      error=failure.getErrorMessage())

    def _candidates(self):
        masters = sorted(set(filter(None, self.slots)))
        rest = [a for a in self.seeds if a not in masters]
        rest += sorted(self.known - set(masters) - set(rest))
        return masters + rest

    async def _refresh(self):
        for address in self._candidates():
            temporary = address not in self.pools
            try:
                ranges, nodes = await self._read_map(self.pool(address), address[0])
            except Exception:
                ranges = None
            if ranges:
                self._install(ranges, nodes)
            if temporary:
                self._drop_if_unused(address)
            if ranges:
                return
        raise RedisUnavailable("no node answered")

    async def _read_map(self, pool, host):
        try:
            return parse_shards(await pool.execute(b"CLUSTER", b"SHARDS"), host)
        except txredisapi.ResponseError as e:
            if "unknown subcommand" not in str(e).lower():
                raise
        return parse_slots(await pool.execute(b"CLUSTER", b"SLOTS"), host)

    def _install(self, ranges, nodes):
        if ranges == self._ranges and nodes <= self.known:
            self._wake_mapped()
            return  # the usual periodic read: nothing changed
        self._ranges = ranges
        slots = [None] * SLOTS
        for (start, end), address in ranges.items():
            slots[start:end + 1] = [address] * (end - start + 1)
        if slots != self.slots:
            self.log.info("Redis Cluster slot map: {masters}",
                          masters=", ".join(f"{h}:{p}" for h, p in sorted(set(ranges.values()))))
        self.slots = slots
        self.known |= nodes
        masters = set(ranges.values())
        for address in masters:
            self.pool(address)
        for address in list(self.pools):
            if address not in masters:
                self._drop_if_unused(address)
        self._wake_mapped()

    def _wake_mapped(self):
        waiting, self._mapped = self._mapped, []
        for d in waiting:
            d.callback(None)

    def _drop_if_unused(self, address):
        if address not in set(self.slots):
            pool = self.pools.pop(address, None)
            if pool is not None and pool.running:
                pool.stopService()

    # ---- commands

    def execute(self, *command):
        # the hot path: the slot of a key from a cache (the queue's keys
        # are one per type), then straight onto the master's pool
        slot = self._slot(command)
        address = self.slots[slot] if slot is not None else None
        pool = self.pools.get(address)
        if pool is None:
            return self._send(slot, command, 0, None)
        return pool.execute(*command).addErrback(
            self._redirect, slot, command, 0, None, address, False)

    def _slot(self, command):
        if command[0] in (b"FCALL", b"EVALSHA") and command[2]:
            key = command[3]
        else:
            key = command_key(command)
            if key is None:
                return None
        slot = self._slots_of.get(key)
        if slot is None:
            if len(self._slots_of) >= 10000:
                self._slots_of.clear()
            slot = self._slots_of[key] = key_slot(key)
        return slot

    def execute_durable(self, *command):
        """execute, then WAIT for [redis] wait_replicas (see RedisService)."""
        return self._send(self._slot(command), command, 0, None, durable=True)

    def _owner(self, slot):
        if slot is None:
            masters = [a for a in set(self.slots) if a is not None]
            return random.choice(masters) if masters else None
        return self.slots[slot]

    def _send(self, slot, command, tries, started, node=None, asking=False,
              durable=False):
        address = node or self._owner(slot)
        if address is None:
            return self._after_map(slot, command, tries, started, durable)
        pool = self.pool(address)
        if asking:
            d = pool.execute_asking(*command)
        elif durable:
            d = pool.execute_durable(*command)
        else:
            d = pool.execute(*command)
        return d.addErrback(self._redirect, slot, command, tries, started, address, durable)

    def _after_map(self, slot, command, tries, started, durable):
        if not self.running:
            return fail(RedisUnavailable("sharqd is stopping."))
        waiter = Deferred(self._mapped.remove)
        self._mapped.append(waiter)
        self.refresh()
        waiter.addTimeout(min(1.0, self.config.timeout / 2), self.reactor,
                          self._no_map)
        return waiter.addCallback(
            lambda _: self._send(slot, command, tries + 1, started, durable=durable))

    def _no_map(self, *_):
        raise RedisUnavailable(
            f"Redis Cluster at {self.describe()[8:]} is not reachable or serves "
            f"no slot map; try again shortly.")

    def _redirect(self, failure, slot, command, tries, started, address, durable):
        error = failure.value
        if started is None:  # the first failure: the command's time starts
            # (its wait for this answer is bounded by the pool's watchdog)
            started = self.reactor.seconds()
        if tries >= RETRIES or \
                self.reactor.seconds() - started >= self.config.timeout:
            if str(error).startswith(("MOVED ", "ASK ")):
                raise RedisUnavailable(f"Redis Cluster is moving slot {slot}: {error}; "
                                       f"try again shortly.")
            return failure
        if isinstance(error, txredisapi.ResponseError):
            text = str(error)
            if text.startswith("MOVED "):
                _, moved_slot, where = text.split()
                target = _address(where, address[0])
                self.slots[int(moved_slot)] = target
                self._ranges = None  # the next read installs the whole map
                self.refresh_soon()
                return self._send(slot, command, tries + 1, started, durable=durable)
            if text.startswith("ASK ") and command[0] in _SCRIPTS:
                return self._later(failure, slot, command, tries, started, durable)
            if text.startswith("ASK "):
                target = _address(text.split()[2], address[0])
                return self._send(slot, command, tries + 1, started, node=target,
                                  asking=True, durable=durable)
            return failure
        if isinstance(error, RedisRefused) and error.reply.startswith(_RETRY):
            self.refresh_soon()
            return self._later(failure, slot, command, tries, started, durable)
        if isinstance(error, RedisUnavailable):
            self.refresh_soon()  # the node may be gone: a replica may take over
        return failure


    def _later(self, failure, slot, command, tries, started, durable):
        """Send again after 50, 100, 200... ms while the command's time
        lasts; then RedisUnavailable."""
        delay = min(0.05 * 2 ** tries, 0.4)
        if self.reactor.seconds() + delay - started < self.config.timeout:
            return deferLater(self.reactor, delay, self._send, slot, command,
                              tries + 1, started, None, False, durable)
        if isinstance(failure.value, RedisUnavailable):
            return failure
        raise RedisUnavailable(f"Redis Cluster is moving slot {slot}; try again shortly.")


class _NodeEndpoint:
    """A client endpoint that connects to the nodes of a cluster in turn,
    so a subscription whose node is lost comes back on another."""

    def __init__(self, reactor, cluster, timeout):
        self.reactor = reactor
        self.cluster = cluster
        self.timeout = timeout
        self.turn = 0

    def connect(self, factory):
        nodes = sorted(self.cluster.known)
        host, port = nodes[self.turn % len(nodes)]
        self.turn += 1
        return HostnameEndpoint(self.reactor, host, port,
                                timeout=self.timeout).connect(factory)


class ClusterSubscription(Subscription):
    """The pattern subscription on a cluster: PUBLISH reaches the
    subscribers of every node, so one node, any node, is enough; when it is
    lost the subscription moves to the next node known."""

    def __init__(self, cluster, pattern, on_message, on_live, reactor=None,
                 keepalive=KEEPALIVE_SECONDS):
        super().__init__(cluster.config, pattern, on_message, on_live, reactor, keepalive)
        self.cluster = cluster

    def describe(self):
        return self.cluster.describe()

    def endpoint(self):
        return _NodeEndpoint(self.reactor, self.cluster, self.config.timeout)
