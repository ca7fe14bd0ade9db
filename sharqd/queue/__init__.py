"""
The queue layer: the queue operations (one Lua script each, in lua/), the
requeue pass and the long-poll waiters.  Knows the queue rules, not HTTP.
"""
