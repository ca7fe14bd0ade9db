"""
The ready channels.  The queue scripts PUBLISH on `<prefix>:{<queue_type>}:ready`
when they make a type ready earlier (common.lua, notify_ready); every sharqd
process on the same Redis hears them all through one pattern subscription
(sharqd.redis.connection.Subscription) and wakes its long-poll waiters.
"""


def ready_pattern(prefix):
    """The pattern that matches the ready channel of every queue type."""
    return f"{prefix}:{{*}}:ready"


def queue_type_of(prefix, channel):
    """The queue type a ready channel names, or None."""
    if isinstance(channel, bytes):
        channel = channel.decode("utf-8", "replace")
    head, tail = f"{prefix}:{{", "}:ready"
    if channel.startswith(head) and channel.endswith(tail):
        return channel[len(head):-len(tail)]
    return None


def ready_listener(prefix, notify):
    """A callback for the subscription's messages: notify(queue_type) for
    each ready channel of the prefix."""
    def heard(channel):
        queue_type = queue_type_of(prefix, channel)
        if queue_type is not None:
            notify(queue_type)
    return heard
