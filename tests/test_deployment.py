"""The deployment examples: manifests that hold together, and an ASGI app that really runs."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import eventually
from zart_conformance.provision import Target
from zart_ref.cli import worker as worker_command

ROOT = Path(__file__).resolve().parent.parent


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def check_worker_args(args: list[str]) -> float:
    """The arguments parse as `zart worker` options; returns the shutdown timeout."""
    assert args[0] == "zart-worker"
    worker_command.make_context("zart-worker", [*args[1:], "--database-url", "sqlite:///x.db"])
    return float(option(args, "--shutdown-timeout"))


def test_kubernetes_grace_period_and_probes_match_the_worker() -> None:
    documents = list(yaml.safe_load_all((ROOT / "deploy/k8s/worker.yaml").read_text()))
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    shutdown = check_worker_args(container["args"])
    assert pod["terminationGracePeriodSeconds"] >= shutdown + 10
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == int(option(container["args"], "--health-port"))
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "health"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (job,) = [d for d in documents if d["kind"] == "Job"]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["zart", "migrate"]


def test_compose_sidecar_stops_gracefully_and_checks_liveness() -> None:
    compose = yaml.safe_load((ROOT / "deploy/docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    shutdown = check_worker_args(worker["command"])
    grace = int(re.fullmatch(r"(\d+)s", worker["stop_grace_period"]).group(1))  # type: ignore[union-attr]
    assert grace >= shutdown + 10 and worker["stop_signal"] == "SIGTERM"
    port = option(worker["command"], "--health-port")
    assert f"127.0.0.1:{port}/livez" in " ".join(worker["healthcheck"]["test"])
    assert compose["services"]["migrate"]["command"] == ["zart", "migrate"]


class ASGIClient:
    """Drives an ASGI app's lifespan and HTTP the way a server does."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __aenter__(self) -> ASGIClient:
        self.task = asyncio.create_task(
            self.app({"type": "lifespan"}, self.inbox.get, self.outbox.put)
        )
        await self.inbox.put({"type": "lifespan.startup"})
        assert (await self.outbox.get())["type"] == "lifespan.startup.complete"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        assert (await self.outbox.get())["type"] == "lifespan.shutdown.complete"
        await self.task

    async def request(self, method: str, path: str, query: str) -> tuple[int, Any]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "query_string": query.encode()}
        await self.app(scope, self.inbox.get, send)
        return sent[0]["status"], json.loads(sent[1]["body"])


async def test_asgi_example_runs_a_workflow_in_its_lifespan(
    db: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", db.url)
    monkeypatch.setenv("ZART_SCHEMA", db.schema or "")
    from examples.asgi_app import App

    async with ASGIClient(App()) as client:
        status, started = await client.request("POST", "/greet", "name=ada")
        assert status == 202 and started["created"]
        path = f"id={started['id']}"

        async def completed() -> bool:
            return (await client.request("GET", "/status", path))[1]["status"] == "completed"

        await eventually(completed)
        record = (await client.request("GET", "/status", path))[1]
        assert record["result"] == "hello, Ada" and record["steps_completed"] == 2
        assert (await client.request("GET", "/status", "id=nope"))[0] == 404
