"""Zart reference worker: durable tasks over PostgreSQL, MySQL/MariaDB and SQLite."""

from .backend import (
    Backend,
    ClaimedTask,
    Lease,
    NewTask,
    Notifier,
    Pending,
    Prober,
    TaskRecord,
)
from .client import Client, UnknownExecution
from .config import PoolConfig, WorkerConfig
from .context import RunningTask, current_task
from .errors import (
    ConfigError,
    DatabaseUnavailable,
    LeaseLost,
    PayloadError,
    UnknownHandler,
    ZartError,
)
from .registry import Registry
from .retry import RetryPolicy
from .sql import SQLBackend
from .urls import normalize_url, redact
from .worker import Worker
from .workflow import DurableBackend, EventTimeout, ExecutionTimeout, sleep, step, wait_for_event

__all__ = [
    "Backend",
    "ClaimedTask",
    "Client",
    "ConfigError",
    "DatabaseUnavailable",
    "DurableBackend",
    "EventTimeout",
    "ExecutionTimeout",
    "Lease",
    "LeaseLost",
    "NewTask",
    "Notifier",
    "PayloadError",
    "Pending",
    "PoolConfig",
    "Prober",
    "Registry",
    "RetryPolicy",
    "RunningTask",
    "SQLBackend",
    "TaskRecord",
    "UnknownExecution",
    "UnknownHandler",
    "Worker",
    "WorkerConfig",
    "ZartError",
    "current_task",
    "normalize_url",
    "redact",
    "sleep",
    "step",
    "wait_for_event",
]
