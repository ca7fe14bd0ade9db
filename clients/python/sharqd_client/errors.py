"""
Errors of the client: each carries the server's status code and message, so
a caller can catch exactly the case it can handle (a duplicate job, a full
queue, a server that is unavailable for now).
"""


class SharqdError(Exception):
    """A request sharqd refused or could not serve.

    `status` is the HTTP status (None when no answer came), `message` the
    server's message, `body` the whole JSON answer."""

    def __init__(self, message, status=None, body=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body or {}

    def __str__(self):
        if self.status is None:
            return self.message
        return f"{self.status}: {self.message}"


class BadRequest(SharqdError):
    """400: invalid input (the message names the field)."""


class Unauthorized(SharqdError):
    """401: no token, or a token the server does not know."""


class Forbidden(SharqdError):
    """403: the token lacks the scope for this action and queue type."""


class NotFound(SharqdError):
    """404: no such queue, job not active, not a dead letter, no route."""


class Conflict(SharqdError):
    """409: the request conflicts with the state (e.g. a stale lease)."""


class Duplicate(Conflict):
    """409 on an enqueue: the job id is already pending or active."""


class QueueFull(SharqdError):
    """429: `max_queued_length` reached; `current_queue_length` tells how full."""

    @property
    def current_queue_length(self):
        return self.body.get("current_queue_length")


class RequestTooLarge(SharqdError):
    """413: the body is larger than the server's `max_request_size`."""


class Unavailable(SharqdError):
    """503 (Redis unreachable), or no answer at all: try again later.
    Idempotent calls are retried with backoff before this is raised."""


class ConnectionFailed(Unavailable):
    """No answer: the connection failed or timed out (`status` is None)."""


class ServerError(SharqdError):
    """500 or any answer the client does not expect (not JSON, ...)."""


_BY_STATUS = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
              409: Conflict, 413: RequestTooLarge, 429: QueueFull, 503: Unavailable}


def error_for(status, body):
    """The exception for a failed answer (status, decoded JSON body)."""
    message = body.get("message") if isinstance(body, dict) else None
    cls = _BY_STATUS.get(status, ServerError)
    return cls(message or f"HTTP {status}", status, body if isinstance(body, dict) else {})
