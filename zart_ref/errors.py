"""Exceptions a user of zart_ref can catch, each naming what was wrong and where."""

from __future__ import annotations


class ZartError(Exception):
    """Base class of every error zart_ref raises on purpose."""


class ConfigError(ZartError):
    """A setting, URL or import path is unusable; the message says which and why."""


class PayloadError(ZartError, ValueError):
    """A payload or result cannot be stored exactly (NaN, NUL, naive datetime, ...)."""


class DatabaseUnavailable(ZartError):
    """The database could not be reached; the message carries the redacted URL."""


class LeaseLost(ZartError):
    """A write was fenced: the task's lock token is no longer the one this worker holds.

    Raised by heartbeat, complete, fail and release when the stored token differs, which
    means another worker reclaimed the task after our lease expired. The handler must stop.
    """

    def __init__(self, task_id: str, token: str, operation: str) -> None:
        super().__init__(f"lease lost on {operation} of task {task_id!r} (token {token[:8]}…)")
        self.task_id = task_id
        self.token = token
        self.operation = operation


class UnknownHandler(ZartError, LookupError):
    """A task names a handler the registry does not know."""
