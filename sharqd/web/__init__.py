"""
The web layer: the Klein app, input validation, the twisted.web site and
request classes, and the worker processes.  Knows HTTP, not Redis.
"""
