"""Network faults between workers and their database, always through the toxiproxy HTTP API.

Provisioning, in order: a real toxiproxy at ``ZART_TOXIPROXY_URL``; a toxiproxy container
through testcontainers when a Docker engine answers; else the kit's own toxiproxy-compatible
server, run on a thread of its own so the runner's loop never carries the proxied traffic.
Every call goes through toxiproxy-python (synchronous, so off the event loop), which means a
scenario behaves the same on the real server.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from toxiproxy import Toxiproxy  # type: ignore[import-untyped]
from toxiproxy.api import APIConsumer  # type: ignore[import-untyped]

from zart_ref.errors import ConfigError

from .provision import docker_unavailable_reason

TOXIPROXY_IMAGE = "ghcr.io/shopify/toxiproxy:2.12.0"
# Fault actions on a worker's proxy, and the toxics they add (stream "both" = one per stream).
TOXIC_ACTIONS = {
    "partition": ("timeout", {"timeout": 0}),
    "latency": ("latency", {"latency": 200, "jitter": 100}),
    "reset": ("reset_peer", {"timeout": 0}),
    "slow_close": ("slow_close", {"delay": 1000}),
    "bandwidth": ("bandwidth", {"rate": 0}),
}
PROXY_ACTIONS = {"heal", "down", "up"}
NETWORK_ACTIONS = set(TOXIC_ACTIONS) | PROXY_ACTIONS


@dataclass
class Network:
    """Proxies of one scenario run on a toxiproxy server; ``how`` says which server."""

    api_url: str
    how: str
    _proxies: dict[str, Any] = field(default_factory=dict)  # worker -> toxiproxy.Proxy
    _prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def __post_init__(self) -> None:
        parsed = urlparse(self.api_url)
        # toxiproxy-python keeps one global API address; the kit drives one server at a time.
        Toxiproxy().update_api_consumer(parsed.hostname, parsed.port or 8474)

    async def proxy_for(self, worker: str, upstream: str, *, enabled: bool = True) -> str:
        """A proxy of the worker's own to ``upstream``; returns its listen address.

        Created enabled so the server binds a real port, then disabled if asked: a proxy
        created disabled reports port 0, and re-enabling keeps the port it had.
        """
        name = f"zart-{self._prefix}-{worker.replace('.', '-')}"
        proxy = await asyncio.to_thread(Toxiproxy().create, upstream, name, "127.0.0.1:0")
        self._proxies[worker] = proxy
        if not enabled:
            await asyncio.to_thread(proxy.disable)
        return str(proxy.listen)

    async def apply(self, action: str, worker: str, params: dict[str, Any]) -> None:
        await asyncio.to_thread(self._apply, action, self._proxies[worker], params)

    @staticmethod
    def _apply(action: str, proxy: Any, params: dict[str, Any]) -> None:
        if action == "down":
            proxy.disable()
        elif action == "up":
            proxy.enable()
        elif action == "heal":
            for name in list(proxy.toxics()):
                proxy.destroy_toxic(name)
        else:
            kind, defaults = TOXIC_ACTIONS[action]
            options = {"toxicity", "stream"}
            attributes = {**defaults, **{k: v for k, v in params.items() if k not in options}}
            streams = [params["stream"]] if "stream" in params else ["upstream", "downstream"]
            for stream in streams:
                proxy.add_toxic(
                    name=f"{action}_{stream}",
                    type=kind,
                    stream=stream,
                    toxicity=params.get("toxicity", 1.0),
                    attributes=attributes,
                )

    async def affected(self, worker: str) -> int | None:
        """Connections the worker's toxics hit, where the server counts them (the kit's does)."""
        proxy = self._proxies.get(worker)
        if proxy is None:
            return None
        path = f"/proxies/{proxy.name}/toxics"
        toxics = (await asyncio.to_thread(APIConsumer.get, path, timeout=10)).json()
        counts = [t["affected"] for t in toxics if "affected" in t]
        return max(counts) if counts else None

    async def close(self) -> None:
        for proxy in self._proxies.values():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(proxy.destroy)
        self._proxies.clear()


def provision_network() -> Network:
    """A Network on this process's one toxiproxy server.

    One server per process, kept until exit: toxiproxy-python addresses a single global API,
    so runs sharing a process (the mutation matrix runs several at once) must share a server.
    Each run's proxies carry a prefix of their own and are removed when the run closes.
    """
    url = os.environ.get("ZART_TOXIPROXY_URL", "").strip().rstrip("/")
    if url:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(
                f"ZART_TOXIPROXY_URL={url!r} is not an http URL (e.g. http://127.0.0.1:8474)"
            )
        return Network(url, f"toxiproxy at $ZART_TOXIPROXY_URL ({url})")
    api_url, how = _process_server()
    return Network(api_url, how)


@functools.cache
def _process_server() -> tuple[str, str]:
    if docker_unavailable_reason() is None:
        return _container()
    return _own_server()


def _container() -> tuple[str, str]:
    from testcontainers.core.container import DockerContainer

    # Host networking: proxies listen on this machine's 127.0.0.1 and reach the same databases.
    container = DockerContainer(TOXIPROXY_IMAGE).with_kwargs(network_mode="host").start()
    atexit.register(container.stop)
    return "http://127.0.0.1:8474", f"testcontainers {TOXIPROXY_IMAGE}"


def _own_server() -> tuple[str, str]:
    """The kit's toxiproxy-compatible server on a daemon thread with its own event loop."""
    from .toxiproxy import ToxiproxyServer

    ready: dict[str, Any] = {}
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            async with ToxiproxyServer("127.0.0.1", port=0) as server:
                ready["url"] = server.url
                started.set()
                await stop.wait()
        except BaseException as exc:
            ready["error"] = exc
            started.set()
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    started.wait(30)
    if "url" not in ready:
        raise ConfigError(f"the kit's toxiproxy server did not start: {ready.get('error')!r}")

    def shutdown() -> None:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)

    atexit.register(shutdown)
    return str(ready["url"]).rstrip("/"), "the kit's own toxiproxy-compatible server"
