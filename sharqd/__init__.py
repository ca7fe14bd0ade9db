"""sharqd: a rate-limited job-queue server speaking the SharQ Server API."""

__version__ = "0.1.0"
