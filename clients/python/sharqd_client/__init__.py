"""
sharqd-client: a Python client and worker for sharqd (the SharQ Server API),
and `sharqctl`, the operators' command line.

    from sharqd_client import Client, Worker
"""

from sharqd_client.client import (AsyncClient, Client, DeadLetterPage, Enqueued, Job,
                                  DEFAULT_URL)
from sharqd_client.errors import (BadRequest, Conflict, ConnectionFailed, Duplicate,
                                  Forbidden, NotFound, QueueFull, RequestTooLarge,
                                  ServerError, SharqdError, Unauthorized, Unavailable)
from sharqd_client.worker import Worker

__version__ = "0.1.0"

__all__ = ["AsyncClient", "Client", "DeadLetterPage", "Enqueued", "Job", "Worker",
           "DEFAULT_URL", "BadRequest", "Conflict", "ConnectionFailed", "Duplicate",
           "Forbidden", "NotFound", "QueueFull", "RequestTooLarge", "ServerError",
           "SharqdError", "Unauthorized", "Unavailable"]
