"""The ``zart`` command: migrate the schema and run a worker process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import fields
from datetime import datetime
from typing import Any

import click
from sqlalchemy.exc import DBAPIError

from .backend import Backend
from .client import Client, UnknownExecution
from .config import PoolConfig, WorkerConfig
from .errors import ConfigError, DatabaseUnavailable, PayloadError, ZartError
from .health import HealthServer
from .importing import load_object
from .moments import check_instant
from .payload import parse_json_argument
from .registry import Registry
from .urls import normalize_url
from .worker import Worker

# Exit codes, distinct so scripts and agents can branch on them.
EXIT_OK = 0
EXIT_FAILED = 1  # wait: the execution ended failed or cancelled
EXIT_USAGE = 2  # bad arguments, JSON, URL, app path
EXIT_UNAVAILABLE = 3  # the database could not be reached
EXIT_TIMEOUT = 4  # wait: still not finished after --timeout
EXIT_UNKNOWN = 5  # no execution with that id
log = logging.getLogger("zart.cli")

database_url = click.option(
    "--database-url",
    envvar="DATABASE_URL",
    required=True,
    help="postgresql://, mysql:// or sqlite:///path (env DATABASE_URL).",
)
schema = click.option(
    "--schema", envvar="ZART_SCHEMA", default=None, help="Schema (PG) or database (MySQL)."
)
backend_path = click.option(
    "--backend",
    "backend_factory",
    default="zart_ref.sql:SQLBackend",
    show_default=True,
    help="module:callable building the backend from (url, pool=, schema=).",
)


def _make_backend(
    factory_path: str, url: str, schema: str | None, pool: PoolConfig, **extra: Any
) -> Backend:
    factory = load_object(factory_path, what="--backend")
    normalize_url(url)  # a bad URL fails here, with its reason, before any import of a driver
    backend = factory(url, pool=pool, schema=schema, **{k: v for k, v in extra.items() if v})
    if not isinstance(backend, Backend):
        raise ConfigError(f"--backend {factory_path!r} returned {backend!r}, not a zart Backend")
    return backend


def _run(coro_factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine, turning zart's own errors into one clear line and a non-zero exit."""
    try:
        asyncio.run(coro_factory())
    except (ConfigError, PayloadError) as exc:
        click.echo(f"zart: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except DatabaseUnavailable as exc:
        click.echo(f"zart: error: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except UnknownExecution as exc:
        click.echo(f"zart: error: {exc}", err=True)
        sys.exit(EXIT_UNKNOWN)
    except ZartError as exc:
        click.echo(f"zart: error: {exc}", err=True)
        sys.exit(1)
    except (DBAPIError, OSError, ValueError, OverflowError) as exc:
        # The database refused us (no such database or role), or a setting was unusable.
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        click.echo(f"zart: error: {type(exc).__name__}: {reason}", err=True)
        sys.exit(EXIT_UNAVAILABLE if isinstance(exc, DBAPIError | OSError) else EXIT_USAGE)


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Zart reference worker."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@database_url
@schema
@backend_path
def migrate(database_url: str, schema: str | None, backend_factory: str) -> None:
    """Create the zart tables if they do not exist (safe to run concurrently)."""

    async def go() -> None:
        backend = _make_backend(backend_factory, database_url, schema, PoolConfig())
        try:
            await backend.migrate()
        finally:
            await backend.close()
        click.echo("zart: schema is up to date")

    _run(go)


def _config_options(cls: type[Any], prefix: str = "") -> Callable[[Any], Any]:
    """One --option per dataclass field, so the CLI and the Python API cannot drift apart."""

    def decorate(fn: Any) -> Any:
        for f in reversed(fields(cls)):
            name = (prefix + f.name).replace("_", "-")
            help_text = f"{cls.__name__}.{f.name} (default {f.default})."
            if f.type in ("bool", bool):
                flag = f"--{name}/--no-{name}"
                fn = click.option(flag, f"{prefix}{f.name}", default=None, help=help_text)(fn)
                continue
            kind = int if f.type in ("int", int) else float
            fn = click.option(
                f"--{name}", f"{prefix}{f.name}", type=kind, default=None, help=help_text
            )(fn)
        return fn

    return decorate


async def _migrate_when_reachable(backend: Backend) -> None:
    """A worker may start before its database: retry the migration instead of crash-looping."""
    delay = 0.5
    while True:
        try:
            await backend.migrate()
            return
        except DatabaseUnavailable as exc:
            log.warning("zart: database not reachable yet, retrying in %.1fs: %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


def _pick(cls: type[Any], values: dict[str, Any], prefix: str = "") -> Any:
    chosen = {
        f.name: values[prefix + f.name] for f in fields(cls) if values[prefix + f.name] is not None
    }
    return cls(**chosen)


@main.command()
@click.option("--app", "app_path", required=True, help="module:registry holding the handlers.")
@database_url
@schema
@backend_path
@click.option("--worker-id", default=None, help="Name shown in logs (never used for ownership).")
@click.option(
    "--listen-database-url",
    envvar="ZART_LISTEN_DATABASE_URL",
    default=None,
    help="Direct server URL for LISTEN (PostgreSQL behind a transaction pooler).",
)
@click.option("--migrate/--no-migrate", "run_migrate", default=True, help="Migrate at start.")
@click.option(
    "--health-port",
    type=int,
    envvar="ZART_HEALTH_PORT",
    default=None,
    help="Serve /livez, /readyz and /metrics on this port (0: any free port).",
)
@click.option("--health-host", default="127.0.0.1", show_default=True, envvar="ZART_HEALTH_HOST")
@_config_options(WorkerConfig)
@_config_options(PoolConfig, prefix="pool_")
def worker(
    app_path: str,
    database_url: str,
    schema: str | None,
    backend_factory: str,
    worker_id: str | None,
    listen_database_url: str | None,
    run_migrate: bool,
    health_port: int | None,
    health_host: str,
    **settings: Any,
) -> None:
    """Run a worker until SIGTERM or SIGINT, then shut down gracefully (exit 0)."""

    async def go() -> None:
        registry = load_object(app_path, what="--app")
        if not isinstance(registry, Registry):
            raise ConfigError(f"--app {app_path!r} is a {type(registry).__name__}, not a Registry")
        config = _pick(WorkerConfig, settings)
        pool = _pick(PoolConfig, settings, prefix="pool_")
        backend = _make_backend(
            backend_factory, database_url, schema, pool, listen_url=listen_database_url
        )
        try:
            if run_migrate:
                await _migrate_when_reachable(backend)
            zart_worker = Worker(backend, registry, config, worker_id=worker_id)
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, zart_worker.stop)
            async with contextlib.AsyncExitStack() as stack:
                if health_port is not None:
                    server = HealthServer(zart_worker, host=health_host, port=health_port)
                    await stack.enter_async_context(server)
                    zart_worker.emit("health_listening", host=health_host, port=server.port)
                    log.warning("zart: health endpoint on http://%s:%d", health_host, server.port)
                await zart_worker.run()
        finally:
            await backend.close()

    _run(go)


def _client(database_url: str, schema: str | None) -> Client:
    return Client.connect(database_url, schema=schema)


def _echo_json(value: object) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--at {text!r} is not an ISO 8601 time (e.g. 2026-12-24T18:00:00+00:00)"
        ) from None
    return check_instant(moment, what=f"--at {text!r}")


@main.command()
@click.argument("workflow")
@click.option("--data", default="null", help="JSON payload (default null).")
@click.option("--id", "execution_id", default=None, help="Execution id (idempotency key).")
@click.option("--at", "at_text", default=None, help="Start time, ISO 8601 with a timezone.")
@click.option("--app", "app_path", default=None, help="module:registry to check WORKFLOW against.")
@database_url
@schema
def schedule(
    workflow: str,
    data: str,
    execution_id: str | None,
    at_text: str | None,
    app_path: str | None,
    database_url: str,
    schema: str | None,
) -> None:
    """Start WORKFLOW; prints {"id", "created"} (created is false when the id existed)."""

    async def go() -> None:
        payload = parse_json_argument(data, what="--data")
        at = None if at_text is None else _parse_time(at_text)
        if app_path is not None:
            registry = load_object(app_path, what="--app")
            if workflow not in registry:
                raise ConfigError(
                    f"unknown workflow {workflow!r}; {app_path} has: {', '.join(registry.names)}"
                )
        async with _client(database_url, schema) as client:
            await client.backend.migrate()
            new_id, created = await client.start(workflow, payload, id=execution_id, at=at)
        _echo_json({"id": new_id, "created": created})

    _run(go)


@main.command()
@click.argument("execution_id")
@database_url
@schema
def status(execution_id: str, database_url: str, schema: str | None) -> None:
    """Print the status record of an execution as JSON."""

    async def go() -> None:
        async with _client(database_url, schema) as client:
            _echo_json(await client.status(execution_id))

    _run(go)


@main.command()
@click.argument("execution_id")
@click.option("--timeout", type=float, required=True, help="Seconds to wait at most.")
@database_url
@schema
def wait(execution_id: str, timeout: float, database_url: str, schema: str | None) -> None:
    """Wait until the execution ends; exit 0 completed, 1 failed/cancelled, 4 timed out."""
    show = sys.stderr.isatty()

    def progress(record: dict[str, object]) -> None:
        if show:
            step_name = record["current_step"] or "-"
            click.echo(
                f"{record['status']}: step {step_name} ({record['steps_completed']} done)",
                err=True,
            )

    async def go() -> None:
        async with _client(database_url, schema) as client:
            try:
                record = await client.wait(execution_id, timeout, on_progress=progress)
            except TimeoutError:
                click.echo(f"zart: {execution_id} not finished after {timeout:g}s", err=True)
                sys.exit(EXIT_TIMEOUT)
        _echo_json(record)
        sys.exit(EXIT_OK if record["status"] == "completed" else EXIT_FAILED)

    _run(go)


@main.command()
@click.argument("execution_id")
@click.argument("name")
@click.option("--data", default="null", help="JSON data of the event.")
@database_url
@schema
def event(execution_id: str, name: str, data: str, database_url: str, schema: str | None) -> None:
    """Deliver event NAME to an execution (once per name)."""

    async def go() -> None:
        payload = parse_json_argument(data, what="--data")
        async with _client(database_url, schema) as client:
            delivered = await client.event(execution_id, name, payload)
        _echo_json({"id": execution_id, "event": name, "delivered": delivered})
        if not delivered:
            click.echo(f"zart: event {name!r} was already delivered to {execution_id}", err=True)
            sys.exit(EXIT_FAILED)

    _run(go)


@main.command()
@click.argument("execution_id")
@database_url
@schema
def cancel(execution_id: str, database_url: str, schema: str | None) -> None:
    """Cancel an execution; a running one stops at its worker's next heartbeat."""

    async def go() -> None:
        async with _client(database_url, schema) as client:
            _echo_json({"id": execution_id, "status": await client.cancel(execution_id)})

    _run(go)


@main.command("list")
@click.option("--status", "status_filter", default=None, help="Only executions in this status.")
@click.option("--limit", type=int, default=100, show_default=True)
@database_url
@schema
def list_executions(
    status_filter: str | None, limit: int, database_url: str, schema: str | None
) -> None:
    """List recent executions as JSON."""

    async def go() -> None:
        async with _client(database_url, schema) as client:
            _echo_json(await client.list(status_filter, limit))

    _run(go)


def worker_main() -> None:
    """``zart-worker``: the sidecar entry point, the same as ``zart worker``."""
    main(["worker", *sys.argv[1:]])


if __name__ == "__main__":
    main()
