"""Liveness, readiness and Prometheus metrics over HTTP, served by aiohttp in the worker's loop.

``/livez`` answers 200 while the worker's event loop runs (a wedged loop cannot answer);
``/readyz`` answers 200 only while the database answered within the last lease and the worker
is not shutting down; ``/metrics`` is the Prometheus text format.
"""

from __future__ import annotations

import json

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from .worker import Worker

# Worker event kinds counted as metrics: event kind -> (metric name, help).
_COUNTED = {
    "claimed": ("zart_tasks_claimed", "Tasks claimed by this worker"),
    "completed": ("zart_tasks_completed", "Tasks completed by this worker"),
    "failed": ("zart_tasks_failed", "Failed attempts recorded by this worker"),
    "released": ("zart_tasks_released", "Tasks released back to scheduled"),
    "lease_lost": ("zart_leases_lost", "Leases this worker found lost"),
    "db_error": ("zart_database_errors", "Database errors retried by this worker"),
}


class Metrics:
    """Prometheus metrics of one worker, fed by its lifecycle events."""

    def __init__(self, worker: Worker) -> None:
        self.registry = CollectorRegistry()
        self._counters = {
            kind: Counter(name, text, registry=self.registry)
            for kind, (name, text) in _COUNTED.items()
        }
        in_flight = Gauge("zart_tasks_in_flight", "Handlers running now", registry=self.registry)
        in_flight.set_function(lambda: worker.in_flight)
        healthy = Gauge(
            "zart_worker_healthy", "1 when the database answers", registry=self.registry
        )
        healthy.set_function(lambda: 1 if worker.is_healthy() else 0)
        worker.add_listener(self.observe)

    def observe(self, kind: str, data: dict[str, object]) -> None:
        counter = self._counters.get(kind)
        if counter is None:
            return
        tasks = data.get("tasks")
        counter.inc(len(tasks) if kind == "claimed" and isinstance(tasks, list) else 1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """``async with HealthServer(worker, port=8080):`` serves the endpoints while the block runs."""

    def __init__(self, worker: Worker, *, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.worker = worker
        self.host = host
        self.port = port
        self.metrics = Metrics(worker)
        app = web.Application()
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/healthz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)

    async def __aenter__(self) -> HealthServer:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._runner.cleanup()

    def _status(self) -> dict[str, object]:
        return {
            "worker": self.worker.worker_id,
            "healthy": self.worker.is_healthy(),
            "stopping": self.worker.stopping,
            "in_flight": self.worker.in_flight,
        }

    async def _livez(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", **self._status()})

    async def _readyz(self, request: web.Request) -> web.Response:
        status = self._status()
        ready = bool(status["healthy"]) and not status["stopping"]
        return web.Response(
            status=200 if ready else 503,
            text=json.dumps({"status": "ready" if ready else "not ready", **status}),
            content_type="application/json",
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
