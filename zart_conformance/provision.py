"""Where a backend's server comes from, and an isolated namespace per scenario run.

Order: the descriptor's URL environment variable; else a testcontainers container when a
Docker engine answers; else an error that names both ways. SQLite needs no server.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from zart_ref.errors import ConfigError
from zart_ref.urls import normalize_url, redact

from .backends import Descriptor

_EXAMPLES = {
    "postgresql": "postgresql://postgres@127.0.0.1:5432/test",
    "mysql": "mysql://root@127.0.0.1:3306/test",
}
_CONTAINERS = {
    "postgresql": ("postgres", "PostgresContainer"),
    "mysql": ("mysql", "MySqlContainer"),
}


class ProvisionError(ConfigError):
    """No server could be found or started for a backend."""


@dataclass
class Server:
    """A database server the kit may create namespaces on; ``how`` says where it came from."""

    url: str | None
    how: str
    container: Any = field(default=None, repr=False)

    def close(self) -> None:
        if self.container is not None:
            self.container.stop()
            self.container = None


def docker_unavailable_reason() -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        import docker  # type: ignore[import-not-found]
    except ModuleNotFoundError:
        return (
            "the docker/testcontainers packages are not installed "
            "(pip install 'zart-ref[containers]', or in a clone: pip install -e '.[containers]')"
        )
    try:
        docker.from_env(timeout=3).ping()
    except Exception as exc:
        return f"no Docker engine answered ({type(exc).__name__}: {str(exc)[:160]})"
    return None


def provision(descriptor: Descriptor) -> Server:
    if descriptor.dialect == "sqlite":
        return Server(url=None, how="embedded (a file per run)")
    env = descriptor.url_env or ""
    url = os.environ.get(env, "").strip()
    if url:
        try:
            normalize_url(url)
        except ConfigError as exc:
            raise ProvisionError(f"${env}: {exc}") from None
        return Server(url=url, how=f"${env} ({redact(url)})")
    reason = docker_unavailable_reason()
    if reason is None and descriptor.container_image:
        return _start_container(descriptor)
    example = _EXAMPLES.get(descriptor.dialect, "scheme://user@host/db")
    image = descriptor.container_image or "(no image declared)"
    raise ProvisionError(
        f"no {descriptor.dialect} server for backend {descriptor.name!r}. Either set {env} to a "
        f"server URL (e.g. {env}={example}), or make a Docker engine reachable so the kit "
        f"starts {image} through testcontainers. Docker: {reason}."
    )


def _start_container(descriptor: Descriptor) -> Server:
    module_name, class_name = _CONTAINERS[descriptor.dialect]
    try:
        module = importlib.import_module(f"testcontainers.community.{module_name}")
    except ModuleNotFoundError:
        module = importlib.import_module(f"testcontainers.{module_name}")
    container_class = getattr(module, class_name)
    kwargs = {"driver": None} if descriptor.dialect == "postgresql" else {}
    container = container_class(descriptor.container_image, **kwargs).start()
    url = container.get_connection_url()
    return Server(url=url, how=f"testcontainers {descriptor.container_image}", container=container)


@dataclass
class Target:
    """One isolated place to run a scenario: a URL and the schema/database inside it."""

    url: str
    schema: str | None
    dialect: str

    async def drop(self) -> None:
        """Remove the run's namespace (its file goes with the run directory)."""
        if self.schema is None:
            return
        engine = create_async_engine(normalize_url(self.url))
        try:
            async with engine.begin() as conn:
                quoted = conn.dialect.identifier_preparer.quote_identifier(self.schema)
                kind = "SCHEMA" if self.dialect == "postgresql" else "DATABASE"
                cascade = " CASCADE" if self.dialect == "postgresql" else ""
                await conn.execute(text(f"DROP {kind} IF EXISTS {quoted}{cascade}"))
        finally:
            await engine.dispose()


def isolate(descriptor: Descriptor, server: Server, run_id: str, run_dir: Path) -> Target:
    if descriptor.isolation == "file":
        return Target(url=f"sqlite:///{run_dir / 'zart.db'}", schema=None, dialect="sqlite")
    assert server.url is not None
    namespace = "zart_" + re.sub(r"[^a-z0-9_]", "_", run_id.lower())[:50]
    return Target(url=server.url, schema=namespace, dialect=descriptor.dialect)
