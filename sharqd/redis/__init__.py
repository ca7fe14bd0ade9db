"""
The Redis layer: connections (commands and the pub/sub subscription), Lua
script calls, the RESP encoding.  Knows Redis, not queues and not HTTP.
"""
