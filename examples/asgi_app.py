"""A zart worker embedded in an ASGI application's lifespan (any ASGI server runs it).

    DATABASE_URL=postgresql://app@db/app uvicorn examples.asgi_app:app

POST /greet?name=ada schedules a durable workflow; GET /status?id=... returns its status.
The worker starts with the application and stops gracefully with it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from zart_ref import Client, Registry, SQLBackend, UnknownExecution, Worker, WorkerConfig, step

registry = Registry()


@registry.workflow(timeout=60)
async def greet(payload: dict[str, str]) -> str:
    name = await step("normalize", str.capitalize, payload["name"])
    return str(await step("compose", lambda: f"hello, {name}"))


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class App:
    def __init__(self) -> None:
        self.client: Client | None = None
        self.worker: Worker | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "http":
            await self.http(scope, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                url = os.environ.get("DATABASE_URL", "sqlite:///zart-asgi.db")
                backend = SQLBackend(url, schema=os.environ.get("ZART_SCHEMA") or None)
                await backend.migrate()
                self.client = Client(backend)
                self.worker = Worker(backend, registry, WorkerConfig(poll_interval=0.2))
                await self.worker.__aenter__()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                assert self.worker is not None and self.client is not None
                await self.worker.__aexit__(None, None, None)  # graceful: finish or release
                await self.client.backend.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: Scope, send: Send) -> None:
        assert self.client is not None
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        status, body = 404, {"error": "not found"}
        if scope["method"] == "POST" and scope["path"] == "/greet":
            execution_id, created = await self.client.start("greet", {"name": query["name"]})
            status, body = 202, {"id": execution_id, "created": created}
        elif scope["method"] == "GET" and scope["path"] == "/status":
            try:
                status, body = 200, await self.client.status(query["id"])
            except UnknownExecution as exc:
                status, body = 404, {"error": str(exc)}
        payload = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


app = App()
