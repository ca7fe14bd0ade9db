"""
Domain errors.  Each carries the HTTP status and the message a client sees,
so the web layer maps every one of them the same way.
"""


class SharqError(Exception):
    """A failure the client is told about: status, message, extra fields."""

    status = 500
    default_message = "Internal server error."

    def __init__(self, message=None, **extra):
        self.message = message or self.default_message
        self.extra = extra
        super().__init__(self.message)

    def body(self):
        """The JSON object answered for this error."""
        return {"status": "failure", "message": self.message, **self.extra}


class BadRequest(SharqError):
    status = 400


class NotFound(SharqError):
    status = 404
    default_message = "Not found."


class TypePaused(NotFound):
    """A dequeue of a queue type that is paused (POST /pause/<type>/)."""

    def __init__(self, queue_type):
        super().__init__(f"Queue type `{queue_type}` is paused: nothing is handed out "
                         f"until POST /resume/{queue_type}/.")


class Conflict(SharqError):
    status = 409


class QueueFull(SharqError):
    status = 429
    default_message = "Max queue length reached"


class RequestTooLarge(SharqError):
    status = 413


class RedisUnavailable(SharqError):
    status = 503
    default_message = "Redis is not reachable; try again shortly."


class ShuttingDown(SharqError):
    status = 503
    default_message = ("sharqd is shutting down; no job was handed out. "
                       "Poll again in a moment.")


class ConfigError(Exception):
    """A config file that cannot be used; str() is the one line to print."""
