"""Settings of the worker and its pool, with the defaults of the original Zart docs."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError

# A week: past this a duration is a typo (or inf), and datetime arithmetic overflows.
_LONGEST = 7 * 24 * 3600.0


def _positive(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not 0 < value <= _LONGEST
        ):
            raise ConfigError(
                f"{type(owner).__name__}.{name} must be a positive number of at most "
                f"{_LONGEST:g}, got {value!r}"
            )


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker polls, how much it runs at once and how long it may hold a task."""

    poll_interval: float = 5.0
    max_tasks_per_poll: int = 10
    # Handlers running at once. A task whose handler has returned gives up its slot while its
    # result is written (so the next claim overlaps that write); at most as many again are held.
    max_concurrent_tasks: int = 16
    shutdown_timeout: float = 30.0
    lease_duration: float = 30.0
    # Heartbeats at a third of the lease, so two may be lost before the lease lapses.
    heartbeat_interval: float | None = None
    # How often expired leases are returned to scheduled; None means half the lease.
    orphan_sweep_interval: float | None = None
    # Wake on database notifications (PostgreSQL LISTEN/NOTIFY) where the backend has them;
    # polling still runs, so pickup never waits longer than poll_interval.
    listen: bool = True

    def __post_init__(self) -> None:
        _positive(self, "poll_interval", "shutdown_timeout", "lease_duration")
        _positive(self, "max_tasks_per_poll", "max_concurrent_tasks")
        if self.heartbeat_interval is not None:
            _positive(self, "heartbeat_interval")
            if self.heartbeat_interval > self.lease_duration / 3:
                raise ConfigError(
                    f"WorkerConfig.heartbeat_interval ({self.heartbeat_interval:g}) must be at "
                    f"most lease_duration / 3 ({self.lease_duration / 3:g}), or leases lapse "
                    "between heartbeats"
                )
        if self.orphan_sweep_interval is not None:
            _positive(self, "orphan_sweep_interval")

    @property
    def heartbeat_every(self) -> float:
        return self.heartbeat_interval or self.lease_duration / 3

    @property
    def sweep_every(self) -> float:
        return self.orphan_sweep_interval or self.lease_duration / 2

    @classmethod
    def from_mapping(cls, values: dict[str, Any], *, where: str) -> WorkerConfig:
        """Build from parsed data; unknown keys are an error naming ``where``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown worker setting(s) {', '.join(unknown)}; "
                f"expected some of: {', '.join(sorted(known))}"
            )
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class PoolConfig:
    """Connections of one worker. Every database call is bounded by ``statement_timeout``."""

    max_connections: int = 20
    min_connections: int = 2
    acquire_timeout: float = 30.0
    connect_timeout: float = 10.0
    statement_timeout: float = 30.0

    def __post_init__(self) -> None:
        _positive(self, "max_connections", "acquire_timeout", "connect_timeout")
        _positive(self, "statement_timeout")
        if not 0 <= self.min_connections <= self.max_connections:
            raise ConfigError(
                f"PoolConfig.min_connections must be between 0 and max_connections "
                f"({self.max_connections}), got {self.min_connections!r}"
            )
