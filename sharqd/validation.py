"""
Checks of client input, in the order the API reports them, with the
original SharQ Server's messages.
"""

import json
import re

from sharqd.errors import BadRequest

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


def integer(name, value, low, high):
    # bool is an int to Python but not a number to a JSON client
    if type(value) is not int or not low <= value <= high:
        raise invalid(name)
    return value


def _no_constants(name):
    raise ValueError(f"{name} is not valid JSON")


# one decoder for all requests: json.loads with options builds a new one
_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def json_body(raw):
    """The request body (UTF-8 bytes) as a JSON object; an empty body is {}."""
    if not raw.strip():
        return {}
    try:
        body = _DECODER.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise BadRequest("The request body is not valid JSON.")
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def encode_payload(payload):
    """Compact JSON text of a payload, stored and handed back as is."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


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
