"""Names to handler functions, and who listens to the worker's lifecycle."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import ConfigError, UnknownHandler
from .moments import check_delay
from .retry import RetryPolicy

HandlerFn = Callable[[Any], Awaitable[Any]]
Listener = Callable[[str, dict[str, Any]], None]
F = TypeVar("F", bound=HandlerFn)


@dataclass(frozen=True)
class Handler:
    name: str
    fn: HandlerFn
    retry: RetryPolicy
    # Execution timeout in seconds, from the first run on (durable sleeps count).
    timeout: float | None = None


class Registry:
    """What a worker can run. ``zart worker --app module:attr`` loads one of these."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._listeners: list[Listener] = []

    def task(
        self, name: str | None = None, *, retry: RetryPolicy | None = None
    ) -> Callable[[F], F]:
        """Decorator: register an ``async def fn(payload)`` under ``name`` (default: its name)."""

        def register(fn: F) -> F:
            self.register(name or fn.__name__, fn, retry=retry)
            return fn

        return register

    def workflow(
        self,
        name: str | None = None,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Callable[[F], F]:
        """Decorator: register a durable workflow (steps, sleeps, events) under ``name``.

        ``timeout`` bounds the whole execution, from its first run, in seconds.
        """

        def register(fn: F) -> F:
            self.register(name or fn.__name__, fn, retry=retry, timeout=timeout)
            return fn

        return register

    def register(
        self,
        name: str,
        fn: HandlerFn,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> None:
        if name in self._handlers:
            raise ConfigError(f"handler {name!r} is registered twice")
        if timeout is not None:
            check_delay(timeout, what=f"timeout of {name!r}", error=ConfigError, zero=False)
        self._handlers[name] = Handler(name, fn, retry or RetryPolicy(), timeout)

    def get(self, name: str) -> Handler:
        try:
            return self._handlers[name]
        except KeyError:
            known = ", ".join(sorted(self._handlers)) or "none"
            raise UnknownHandler(f"no handler named {name!r} (registered: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    @property
    def names(self) -> list[str]:
        return sorted(self._handlers)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(kind, data)`` on every worker lifecycle event; it must not block."""
        self._listeners.append(listener)

    @property
    def listeners(self) -> tuple[Listener, ...]:
        return tuple(self._listeners)
