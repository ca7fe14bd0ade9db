"""
Checks of client input, in the order the API reports them, with the
original SharQ Server's messages.
"""

import json
import json.encoder
import math
import re

from sharqd.errors import BadRequest
from sharqd.queue.operations import POLICY_FIELDS, BatchJob

_IDENTIFIER = re.compile(r"[A-Za-z0-9_-]{1,100}")

# Upper bounds keep every number exact in Redis' Lua (doubles).
MAX_INTERVAL = 10**12
MAX_REQUEUE_LIMIT = 10**9
MAX_QUEUED_LENGTH = 2**52


def invalid(name):
    return BadRequest(f"`{name}` has an invalid value.")


def missing(name):
    return BadRequest(f"`{name}` is a mandatory parameter.")


def identifier(name, value):
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise invalid(name)
    return value


def identifiers(**named):
    """identifier() of each, in the order given (path order)."""
    for name, value in named.items():
        identifier(name, value)


def integer(name, value, low, high):
    # bool is an int to Python but not a number to a JSON client
    if type(value) is not int or not low <= value <= high:
        raise invalid(name)
    return value


def _no_constants(name):
    raise ValueError(f"{name} is not valid JSON")


class _OutOfRange(ValueError):
    """A JSON number no double holds (1e400): it would come back as
    Infinity, which is not JSON."""


def _finite(text):
    number = float(text)
    if not math.isfinite(number):
        raise _OutOfRange(text)
    return number


# one decoder for all requests: json.loads with options builds a new one
_DECODER = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite)


def _decode(text):
    """The JSON document text holds.  The document alone, as clients send
    it, goes straight to raw_decode: decode() matches a whitespace regular
    expression before and after it, which cost as much as the parse of a
    small body.  Anything else (whitespace around it, an error) goes
    through decode(), which says what is wrong."""
    try:
        value, end = _DECODER.raw_decode(text)
    except ValueError:
        end = -1
    return value if end == len(text) else _DECODER.decode(text)


def json_body(raw):
    """The request body (UTF-8 bytes) as a JSON object; an empty body is {}."""
    if not raw.strip():
        return {}
    try:
        body = _decode(raw.decode("utf-8"))
    except _OutOfRange as e:
        raise BadRequest(f"The request body holds the number {str(e)[:40]}, "
                         f"out of range of a double; send it as a string.")
    except (ValueError, RecursionError):
        raise BadRequest("The request body is not valid JSON.")
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


# One C encoder for every payload: json.dumps(..., separators=(",", ":"),
# ensure_ascii=False) would build it anew per call (no circular check: a
# parsed JSON value cannot be circular; no NaN or Infinity: not JSON).
_C_ENCODER = json.encoder.c_make_encoder and json.encoder.c_make_encoder(
    None, json.JSONEncoder().default, json.encoder.encode_basestring, None,
    ":", ",", False, False, False)
_PY_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
                               allow_nan=False)


def encode_payload(payload):
    """Compact JSON text (UTF-8) of a payload, stored and handed back as is."""
    try:
        if _C_ENCODER is None:
            return _PY_ENCODER.encode(payload).encode()
        return "".join(_C_ENCODER(payload, 0)).encode()
    # a lone surrogate ("\ud800") has no UTF-8 form; NaN has no JSON form
    except (UnicodeEncodeError, ValueError):
        raise invalid("payload")


def enqueue_fields(body, default_requeue_limit):
    """job_id, interval, payload, requeue_limit, max_queued_length of an enqueue."""
    for name in ("job_id", "interval", "payload"):
        if name not in body:
            raise missing(name)
    job_id = identifier("job_id", body["job_id"])
    interval = integer("interval", body["interval"], 0, MAX_INTERVAL)
    payload = body["payload"]
    requeue_limit = integer("requeue_limit",
                            body.get("requeue_limit", default_requeue_limit),
                            -1, MAX_REQUEUE_LIMIT)
    # the original read max_queued_length from inside the payload
    max_length = body.get("max_queued_length")
    if max_length is None and isinstance(payload, dict):
        max_length = payload.get("max_queued_length")
    if max_length is not None:
        max_length = integer("max_queued_length", max_length, 0, MAX_QUEUED_LENGTH)
    return job_id, interval, payload, requeue_limit, max_length


def interval_field(body):
    if "interval" not in body:
        raise missing("interval")
    return integer("interval", body["interval"], 0, MAX_INTERVAL)


def purge_all_field(body):
    purge_all = body.get("purge_all", False)
    if not isinstance(purge_all, bool):
        raise invalid("purge_all")
    return purge_all


# ---- query arguments and batches of the API extensions

MAX_WAIT_SECONDS = 60
MAX_COUNT = 100
MAX_LEASE = 86_400_000
MAX_BATCH = 1000
MAX_PAGE = 1000
MAX_QUEUE_ID_PAGE = 10000
# plain decimal numbers only: int() and float() would also take "1_0",
# " 5", "1e1", "inf" and non-ASCII digits
_DIGITS = re.compile(r"[0-9]{1,16}")
_DECIMAL = re.compile(r"[0-9]{1,16}(\.[0-9]{0,16})?|\.[0-9]{1,16}")


def query_arg(args, name):
    """The last value of a query argument as text, or None when absent."""
    values = args.get(name.encode())
    if not values:
        return None
    return values[-1].decode("latin-1")


def _whole(name, text, low, high):
    if text is None or not _DIGITS.fullmatch(text):
        raise invalid(name)
    return integer(name, int(text), low, high)


def wait_arg(text):
    """Seconds to wait: 0 < S <= 60, may be fractional."""
    if text is None or not _DECIMAL.fullmatch(text):
        raise invalid("wait")
    seconds = float(text)
    if not 0 < seconds <= MAX_WAIT_SECONDS:
        raise invalid("wait")
    return seconds


def count_arg(text):
    return _whole("count", text, 1, MAX_COUNT)


def lease_arg(text):
    return _whole("lease", text, 1, MAX_LEASE)


def offset_arg(text):
    return _whole("offset", text, 0, 10**9)


def limit_arg(text):
    return _whole("limit", text, 1, MAX_PAGE)


def queue_id_limit_arg(text):
    return _whole("limit", text, 1, MAX_QUEUE_ID_PAGE)


def lease_field(body):
    """The optional `lease` of a touch body, or None."""
    if "lease" not in body:
        return None
    return integer("lease", body["lease"], 1, MAX_LEASE)


def jobs_field(body):
    """The `jobs` list of a batch: 1 to MAX_BATCH entries."""
    if "jobs" not in body:
        raise missing("jobs")
    jobs = body["jobs"]
    if not isinstance(jobs, list) or not 1 <= len(jobs) <= MAX_BATCH:
        raise BadRequest(f"`jobs` has an invalid value: give a list of 1 to "
                         f"{MAX_BATCH} jobs.")
    return jobs


def batch_job(job):
    """A job object of a batch must be a JSON object."""
    if not isinstance(job, dict):
        raise BadRequest("A job must be a JSON object.")
    return job


def queue_id_field(job):
    if "queue_id" not in job:
        raise missing("queue_id")
    return identifier("queue_id", job["queue_id"])


def batch_enqueue_job(job, default_requeue_limit):
    """The BatchJob of one job of a batch enqueue (payload encoded)."""
    queue_id = queue_id_field(batch_job(job))
    job_id, interval, payload, limit, max_length = enqueue_fields(
        job, default_requeue_limit)
    return BatchJob(queue_id, job_id, interval, encode_payload(payload), limit,
                    max_length)


def batch_finish_job(job):
    """(queue_id, job_id, lease_id or None) of one job of a batch finish."""
    queue_id = queue_id_field(batch_job(job))
    if "job_id" not in job:
        raise missing("job_id")
    return queue_id, identifier("job_id", job["job_id"]), lease_id_field(job)


# ---- lease ids and rate policies

def lease_id(value):
    """A lease id as the dequeue answered it (a string; a number is taken too)."""
    if type(value) is int and value >= 0:
        value = str(value)
    return identifier("lease_id", value)


def lease_id_field(body):
    """The optional `lease_id` of a JSON object, or None."""
    value = body.get("lease_id")
    return None if value is None else lease_id(value)


def finish_lease_id(args, raw):
    """The optional lease id of a finish: `?lease_id=`, else `lease_id` in
    the body.  A finish had no body before lease ids: a body that is not a
    JSON object is ignored, as it always was."""
    text = query_arg(args, "lease_id")
    if text is not None:
        return lease_id(text)
    if not raw.strip():
        return None
    try:
        body = json_body(raw)
    except BadRequest:
        return None
    return lease_id_field(body)


MIN_RATE, MAX_RATE = 0.000001, 1_000_000
MAX_BURST = 1_000_000
MAX_ACTIVE = 10**9


def _number(value):
    return type(value) in (int, float)


def policy_fields(body):
    """The changes of a PUT /policy/... body: the fields given, None for a
    null (which removes the field)."""
    for name in body:
        if name not in POLICY_FIELDS:
            raise BadRequest(f"`{name}` is not a policy field; give any of `rate`, "
                             f"`burst`, `max_active`, `paused`.")
    rate, burst = body.get("rate"), body.get("burst")
    max_active, paused = body.get("max_active"), body.get("paused")
    if rate is not None and not (_number(rate) and MIN_RATE <= rate <= MAX_RATE):
        raise BadRequest(f"`rate` has an invalid value: give jobs per second, a number "
                         f"from {MIN_RATE:g} to {MAX_RATE}.")
    if burst is not None and (type(burst) is not int or not 1 <= burst <= MAX_BURST):
        raise BadRequest(f"`burst` has an invalid value: give a whole number from "
                         f"1 to {MAX_BURST}.")
    if max_active is not None and (type(max_active) is not int
                                   or not 1 <= max_active <= MAX_ACTIVE):
        raise BadRequest(f"`max_active` has an invalid value: give a whole number from "
                         f"1 to {MAX_ACTIVE}.")
    if paused is not None and not isinstance(paused, bool):
        raise BadRequest("`paused` has an invalid value: give true or false.")
    changes = dict(body)
    if rate is not None:
        changes["rate"] = float(rate)
    return changes


def fresh_arg(text):
    """The `fresh` of GET /prometheus: 1 reads the figures at once, 0 (the
    default) answers from the snapshot."""
    if text is None or text == "0":
        return False
    if text == "1":
        return True
    raise invalid("fresh")


def sort_arg(text):
    """The `sort` of GET /queues/<type>/: pending (default) or queue_id."""
    if text is None:
        return "pending"
    if text not in ("pending", "queue_id"):
        raise invalid("sort")
    return text
