"""Start, observe, signal and cancel executions from an application, a script or an agent."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .backend import NewTask, TaskRecord
from .errors import ZartError
from .schema import TERMINAL
from .sql import SQLBackend
from .workflow import DurableBackend


class UnknownExecution(ZartError, LookupError):
    """No execution has this id."""


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def describe(record: TaskRecord) -> dict[str, Any]:
    """A JSON-able status record of one execution."""
    return {
        "id": record.id,
        "workflow": record.name,
        "status": record.status,
        "current_step": record.current_step,
        "steps_completed": record.steps_completed,
        "waiting_for": record.waiting_for,
        "cancel_requested": record.cancel_requested,
        "attempts": record.attempts,
        "created_at": _iso(record.created_at),
        "run_at": _iso(record.run_at),
        "finished_at": _iso(record.finished_at),
        "deadline": _iso(record.deadline),
        "result": record.result,
        "error": record.error,
    }


class Client:
    """The client API. ``async with Client.connect(url) as client:`` owns its connections."""

    def __init__(self, backend: DurableBackend) -> None:
        self.backend = backend
        self._owned = False

    @classmethod
    def connect(cls, url: str, *, schema: str | None = None) -> Client:
        client = cls(SQLBackend(url, schema=schema))
        client._owned = True
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._owned:
            await self.backend.close()

    async def start(
        self,
        workflow: str,
        data: Any = None,
        *,
        id: str | None = None,
        at: datetime | None = None,
        delay: float = 0.0,
    ) -> tuple[str, bool]:
        """Schedule ``workflow``; the id is the idempotency key. Returns (id, created): an id
        that exists already is left as it is and returned with created False."""
        execution_id = id or uuid.uuid4().hex
        (created,) = await self.backend.schedule(
            [NewTask(execution_id, workflow, data, delay=delay, run_at=at)]
        )
        return execution_id, created

    async def record(self, execution_id: str) -> TaskRecord:
        record = await self.backend.get(execution_id)
        if record is None:
            raise UnknownExecution(f"no execution with id {execution_id!r}")
        return record

    async def status(self, execution_id: str) -> dict[str, Any]:
        return describe(await self.record(execution_id))

    async def wait(
        self,
        execution_id: str,
        timeout: float,  # noqa: ASYNC109 - the API's name
        *,
        poll: float = 0.2,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """The status once the execution is terminal; TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            last: tuple[Any, ...] | None = None
            while True:
                status = await self.status(execution_id)
                progress = (status["status"], status["current_step"], status["steps_completed"])
                if on_progress is not None and progress != last:
                    on_progress(status)
                last = progress
                if status["status"] in TERMINAL:
                    return status
                await asyncio.sleep(poll)

    async def event(self, execution_id: str, name: str, data: Any = None) -> bool:
        """Deliver an event; False when one of that name was delivered already."""
        await self.record(execution_id)
        return await self.backend.deliver_event(execution_id, name, data)

    async def cancel(self, execution_id: str) -> str:
        """Cancel; returns the status after the request (running ones stop at once)."""
        status = await self.backend.request_cancel(execution_id)
        if status is None:
            raise UnknownExecution(f"no execution with id {execution_id!r}")
        return status

    async def list(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        ids = await self.backend.list_ids(status, limit)
        return [describe(await self.record(i)) for i in ids]
