"""
`[sharq-server] log_format = json`: one JSON object per line for log
shippers, written where twistd would write its text log.

    {"time": "2026-11-29T17:03:12.345Z", "level": "info",
     "namespace": "sharqd.web.site.HTTPService",
     "message": "sharqd listening on tcp:8080", "fields": {"where": "tcp:8080"}}

A worker process's lines come through its parent as they are, with
"worker": N added.
"""

import json
import sys
from datetime import datetime, timezone

from twisted.logger import FileLogObserver, formatEvent
from twisted.python import logfile

# keys the legacy twisted.python.log bridge adds to every event
_LEGACY = {"format", "message", "isError", "system", "time", "why", "failure", "printed"}
WORKER_RECORD = "sharqd_worker_record"  # a worker's record, relayed (workers.py)


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def json_line(event):
    """The JSON line of one twisted.logger event."""
    relayed = event.get(WORKER_RECORD)
    if relayed is not None:
        return json.dumps({**relayed, "worker": event.get("n")}, default=_plain) + "\n"
    when = datetime.fromtimestamp(event.get("log_time", 0), timezone.utc)
    level = event.get("log_level")
    record = {"time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
              "level": level.name if level is not None else "info",
              "namespace": event.get("log_namespace", "-"),
              "message": formatEvent(event)}
    fields = {k: v for k, v in event.items()
              if not k.startswith("log_") and k not in _LEGACY}
    if fields:
        record["fields"] = fields
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, default=_plain) + "\n"


def twistd_log_file(twistd_options):
    """The file twistd would log to, from its options (see twistd's
    UnixAppLogger): stdout in the foreground unless --logfile names a file,
    else --logfile or twistd.log."""
    path = twistd_options.get("logfile") or ""
    if path == "-" or (twistd_options.get("nodaemon") and not path):
        return sys.stdout
    return logfile.LogFile.fromFullPath(path or "twistd.log")


def json_observer(twistd_options):
    return FileLogObserver(twistd_log_file(twistd_options), json_line)
