"""The kit's toxiproxy server, held to the toxiproxy v2 behaviour the kit relies on.

The tests run against the in-process server by default. With ZART_TOXIPROXY_URL (e.g.
http://127.0.0.1:8474) they drive a real toxiproxy instead, which keeps them honest: they check
only what the real server does, and the kit-only extras (the ``affected`` and ``connections``
counters, the command) skip there. The toxiproxy-python client is synchronous, so it is called
through ``asyncio.to_thread``; raw HTTP (aiohttp) covers what it cannot say.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import pytest
import toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

from tests.conftest import SCALE, eventually
from zart_conformance.toxiproxy import ToxiproxyServer

REAL_URL = os.environ.get("ZART_TOXIPROXY_URL")
T = TypeVar("T")

# Physical lower bounds of timings are exact (less a little for timer granularity); upper
# bounds are generous and scaled by ZART_TIME_SCALE.
EARLY = 0.01


def slack(seconds: float = 0.5) -> float:
    return seconds * SCALE


class Upstream:
    """An echo server standing in for a database: records what reached it, can drop clients."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.clients: set[asyncio.StreamWriter] = set()
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        self.drop_clients()
        await asyncio.gather(*self._tasks)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._echo(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @contextlib.asynccontextmanager
    async def _changing(self) -> AsyncIterator[None]:
        """Change the recorded state inside; waiters of wait_for() look again afterwards."""
        async with self._changed:
            yield
            self._changed.notify_all()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._changing():
            self.clients.add(writer)
        try:
            while data := await reader.read(65536):
                async with self._changing():
                    self.received += data
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            async with self._changing():
                self.clients.discard(writer)

    async def wait_for(self, predicate: Callable[[], bool], seconds: float = 2.0) -> None:
        async with asyncio.timeout(slack(seconds)), self._changed:
            await self._changed.wait_for(predicate)

    def drop_clients(self) -> None:
        for writer in self.clients:
            writer.close()


class Peer:
    """A client socket, usually connected through a proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, payload: bytes) -> None:
        self.writer.write(payload)
        await self.writer.drain()

    async def echo(self, payload: bytes = b"ping", seconds: float = 2.0) -> float:
        """Send and read the echo back; returns how long the round trip took."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self.send(payload)
        async with asyncio.timeout(slack(seconds)):
            assert await self.reader.readexactly(len(payload)) == payload
        return loop.time() - start

    async def read_to_end(self, seconds: float = 1.0) -> bytes:
        """What arrives until the peer closes (FIN or RST), which must happen in time."""
        data = bytearray()
        async with asyncio.timeout(slack(seconds)):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await self.reader.read(65536):
                    data += chunk
        return bytes(data)

    async def assert_silent(self, seconds: float = 0.3) -> None:
        """Nothing arrives and the connection stays open for a while."""
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(seconds):
                got = await self.reader.read(1)
                pytest.fail(f"expected silence, got {got!r}")


@dataclass
class Reply:
    status: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def assert_error(
    reply: Reply, status: int, message: str, *, prefix: bool = False, newline: bool = True
) -> None:
    """The real server's error: ``{"error": message, "status": status}`` and a newline."""
    assert reply.status == status, reply
    assert reply.text.endswith("\n") or not newline, reply
    body = reply.json()
    assert body["status"] == status
    assert body["error"].startswith(message) if prefix else body["error"] == message, body


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


@dataclass
class Toxi:
    """The server under test, the client pointed at it, and what the test made there."""

    url: str
    real: bool
    http: aiohttp.ClientSession
    client: toxiproxy.Toxiproxy = field(default_factory=toxiproxy.Toxiproxy)
    names: list[str] = field(default_factory=list)
    peers: list[Peer] = field(default_factory=list)

    def kit_only(self) -> None:
        if self.real:
            pytest.skip("checks an extra of the kit's server that a real toxiproxy lacks")

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(function, *args, **kwargs)

    async def request(
        self, method: str, path: str, body: object = None, *, data: str | None = None
    ) -> Reply:
        if body is not None:
            data = json.dumps(body)
        async with self.http.request(method, self.url + path, data=data) as response:
            return Reply(response.status, await response.text())

    def new_name(self) -> str:
        name = f"zart-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        return name

    async def create(self, upstream: str) -> toxiproxy.Proxy:
        return await self.call(self.client.create, upstream=upstream, name=self.new_name())

    async def show(self, name: str) -> dict[str, Any]:
        reply = await self.request("GET", f"/proxies/{name}")
        assert reply.status == 200, reply
        result: dict[str, Any] = reply.json()
        return result

    async def toxic(self, proxy: toxiproxy.Proxy, **spec: Any) -> None:
        await self.call(proxy.add_toxic, **spec)

    async def connect(self, target: toxiproxy.Proxy | int) -> Peer:
        port = port_of(target.listen) if isinstance(target, toxiproxy.Proxy) else target
        peer = Peer(*await asyncio.open_connection("127.0.0.1", port))
        self.peers.append(peer)
        return peer

    async def cleanup(self) -> None:
        for peer in self.peers:
            peer.writer.transport.abort()
        for name in self.names:
            await self.request("DELETE", f"/proxies/{name}")


@pytest.fixture
async def toxi() -> AsyncIterator[Toxi]:
    saved = APIConsumer.host, APIConsumer.port
    async with contextlib.AsyncExitStack() as stack:
        if REAL_URL:
            url = REAL_URL.rstrip("/")
        else:
            server = ToxiproxyServer("127.0.0.1", port=0)
            url = (await stack.enter_async_context(server)).url
        http = await stack.enter_async_context(aiohttp.ClientSession())
        server_toxi = Toxi(url, bool(REAL_URL), http)
        parts = urlsplit(url)
        server_toxi.client.update_api_consumer(parts.hostname, parts.port)
        try:
            yield server_toxi
        finally:
            await server_toxi.cleanup()
            APIConsumer.host, APIConsumer.port = saved


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with Upstream() as server:
        yield server


@pytest.fixture
async def proxy(toxi: Toxi, upstream: Upstream) -> toxiproxy.Proxy:
    return await toxi.create(upstream.address)


# -- the compatibility checks 1-12 of the toxiproxy design note (shared/design/toxiproxy.md) ----


async def test_1_version(toxi: Toxi) -> None:
    reply = await toxi.request("GET", "/version")
    assert reply.status == 200
    assert re.search(r"\d+\.\d+\.\d+", reply.json()["version"])
    assert await toxi.call(toxi.client.version)


async def test_2_create_listens_on_a_real_port_and_proxies(toxi: Toxi, upstream: Upstream) -> None:
    name = toxi.new_name()
    spec = {"name": name, "upstream": upstream.address, "listen": "127.0.0.1:0"}
    reply = await toxi.request("POST", "/proxies", spec)
    assert reply.status == 201
    created = reply.json()
    assert (created["name"], created["enabled"], created["toxics"]) == (name, True, [])
    assert re.fullmatch(r"127\.0\.0\.1:\d+", created["listen"]) and port_of(created["listen"])
    peer = await toxi.connect(port_of(created["listen"]))
    await peer.echo(b"through the proxy")
    assert upstream.received == b"through the proxy"
    index = (await toxi.request("GET", "/proxies")).json()
    shown = await toxi.show(name)
    for found in (index[name], shown):
        assert {k: found[k] for k in ("name", "listen", "upstream", "enabled")} == {
            k: created[k] for k in ("name", "listen", "upstream", "enabled")
        }
    client_view = await toxi.call(toxi.client.get_proxy, name)
    assert client_view is not None and client_view.listen == created["listen"]


async def test_3_proxy_errors(toxi: Toxi, proxy: toxiproxy.Proxy) -> None:
    duplicate = {"name": proxy.name, "upstream": proxy.upstream, "listen": "127.0.0.1:0"}
    assert_error(await toxi.request("POST", "/proxies", duplicate), 409, "proxy already exists")
    with pytest.raises(ProxyExists):
        await toxi.call(toxi.client.create, upstream=proxy.upstream, name=proxy.name)
    assert_error(await toxi.request("POST", "/proxies", {}), 400, "missing required field: name")
    no_upstream = {"name": toxi.new_name()}
    assert_error(
        await toxi.request("POST", "/proxies", no_upstream), 400, "missing required field: upstream"
    )
    malformed = await toxi.request("POST", "/proxies", data="{")
    assert_error(malformed, 400, "bad request body", prefix=True)
    missing = toxi.new_name()
    assert_error(await toxi.request("GET", f"/proxies/{missing}"), 404, "proxy not found")
    ghost = toxiproxy.Proxy(name=missing, upstream="127.0.0.1:1", enabled=True, listen="x")
    with pytest.raises(NotFound):
        await toxi.call(ghost.destroy)


async def test_4_listen_address_in_use_is_a_500_and_no_proxy(
    toxi: Toxi, upstream: Upstream
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        name = toxi.new_name()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        spec = {"name": name, "upstream": upstream.address, "listen": listen}
        reply = await toxi.request("POST", "/proxies", spec)
    assert reply.status == 500
    assert "address already in use" in reply.json()["error"]
    assert_error(await toxi.request("GET", f"/proxies/{name}"), 404, "proxy not found")


async def assert_refused(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()


async def test_5_disable_closes_connections_and_refuses_until_enabled(
    toxi: Toxi, upstream: Upstream, proxy: toxiproxy.Proxy
) -> None:
    peer = await toxi.connect(proxy)
    await peer.echo()
    await toxi.call(proxy.disable)
    assert await peer.read_to_end(seconds=1.0) == b""
    await upstream.wait_for(lambda: not upstream.clients, seconds=1.0)
    await assert_refused(port_of(proxy.listen))
    assert (await toxi.show(proxy.name))["enabled"] is False

    await toxi.call(proxy.enable)
    shown = await toxi.show(proxy.name)
    assert (shown["enabled"], shown["listen"]) == (True, proxy.listen)
    await (await toxi.connect(proxy)).echo()

    down = proxy.down()
    await toxi.call(down.__enter__)
    try:
        await assert_refused(port_of(proxy.listen))
    finally:
        await toxi.call(down.__exit__, None, None, None)
    await (await toxi.connect(proxy)).echo()


async def test_6_reset_enables_proxies_and_removes_toxics(
    toxi: Toxi, proxy: toxiproxy.Proxy
) -> None:
    await toxi.toxic(proxy, type="latency", attributes={"latency": 1000})
    await toxi.call(proxy.disable)
    reply = await toxi.request("POST", "/reset")
    assert (reply.status, reply.text) == (204, "")
    shown = await toxi.show(proxy.name)
    assert (shown["enabled"], shown["toxics"]) == (True, [])
    assert await (await toxi.connect(proxy)).echo() < slack(0.5)
    assert await toxi.call(toxi.client.reset) is True


async def test_7_toxic_defaults(toxi: Toxi, proxy: toxiproxy.Proxy) -> None:
    reply = await toxi.request("POST", f"/proxies/{proxy.name}/toxics", {"type": "latency"})
    assert reply.status == 200
    toxic = reply.json()
    assert (toxic["name"], toxic["type"], toxic["stream"]) == (
        "latency_downstream",
        "latency",
        "downstream",
    )
    assert toxic["toxicity"] == 1
    assert toxic["attributes"] == {"latency": 0, "jitter": 0}


async def test_8_toxic_errors(toxi: Toxi, proxy: toxiproxy.Proxy) -> None:
    toxics = f"/proxies/{proxy.name}/toxics"
    assert_error(await toxi.request("POST", toxics, {"type": "nope"}), 400, "invalid toxic type")
    bad_stream = {"type": "latency", "stream": "sideways"}
    assert_error(
        await toxi.request("POST", toxics, bad_stream),
        400,
        "stream was invalid, can be either upstream or downstream",
    )
    first = {"type": "latency", "name": "slow", "stream": "upstream"}
    assert (await toxi.request("POST", toxics, first)).status == 200
    again = {"type": "latency", "name": "slow", "stream": "downstream"}
    assert_error(await toxi.request("POST", toxics, again), 409, "toxic already exists")
    assert_error(await toxi.request("GET", f"{toxics}/missing"), 404, "toxic not found")
    assert_error(
        await toxi.request("GET", f"/proxies/{toxi.new_name()}/toxics"), 404, "proxy not found"
    )
    with pytest.raises(InvalidToxic):
        await toxi.toxic(proxy, type="nope")
    with pytest.raises(ProxyExists):
        await toxi.toxic(proxy, type="latency", name="slow")


async def test_9_partial_update_keeps_other_attributes_then_delete(
    toxi: Toxi, proxy: toxiproxy.Proxy
) -> None:
    await toxi.toxic(proxy, type="latency", name="lag", attributes={"latency": 100, "jitter": 10})
    path = f"/proxies/{proxy.name}/toxics/lag"
    reply = await toxi.request("POST", path, {"attributes": {"latency": 200}})
    assert reply.status == 200
    assert (reply.json()["attributes"], reply.json()["toxicity"]) == (
        {"latency": 200, "jitter": 10},
        1,
    )
    reply = await toxi.request("PATCH", path, {"toxicity": 0.5})
    assert reply.status == 200
    assert (reply.json()["attributes"], reply.json()["toxicity"]) == (
        {"latency": 200, "jitter": 10},
        0.5,
    )
    assert (await toxi.request("GET", path)).json()["attributes"]["latency"] == 200
    reply = await toxi.request("DELETE", path)
    assert (reply.status, reply.text) == (204, "")
    assert_error(await toxi.request("GET", path), 404, "toxic not found")
    assert_error(await toxi.request("DELETE", path), 404, "toxic not found")


async def test_10_latency_on_an_open_connection_and_after_removal(
    toxi: Toxi, proxy: toxiproxy.Proxy
) -> None:
    peer = await toxi.connect(proxy)
    assert await peer.echo() < slack(0.25)
    for stream in ("upstream", "downstream"):
        await toxi.toxic(proxy, type="latency", stream=stream, attributes={"latency": 150})
    elapsed = await peer.echo()
    assert 0.3 - EARLY <= elapsed <= 0.3 + slack(0.5)
    for stream in ("upstream", "downstream"):
        await toxi.call(proxy.destroy_toxic, f"latency_{stream}")
    assert await peer.echo() < slack(0.25)


async def test_11_removing_a_long_latency_releases_pending_data_intact(
    toxi: Toxi, upstream: Upstream, proxy: toxiproxy.Proxy
) -> None:
    peer = await toxi.connect(proxy)
    await peer.echo()
    await toxi.toxic(proxy, type="latency", attributes={"latency": 10_000})
    payload = os.urandom(200_000)
    await peer.send(payload)
    await upstream.wait_for(lambda: len(upstream.received) == 4 + len(payload))
    await peer.assert_silent()
    await toxi.call(proxy.destroy_toxic, "latency_downstream")
    async with asyncio.timeout(slack(2.0)):
        assert await peer.reader.readexactly(len(payload)) == payload


async def test_12_timeout_zero_black_holes_until_removed_then_closes(
    toxi: Toxi, upstream: Upstream, proxy: toxiproxy.Proxy
) -> None:
    peer = await toxi.connect(proxy)
    await peer.echo(b"before")
    await toxi.toxic(proxy, type="timeout", stream="upstream", attributes={"timeout": 0})
    await peer.send(b"lost")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await upstream.wait_for(lambda: b"lost" in upstream.received)
    await peer.assert_silent()
    await toxi.call(proxy.destroy_toxic, "timeout_upstream")
    assert await peer.read_to_end(seconds=1.0) == b""
    await upstream.wait_for(lambda: not upstream.clients, seconds=1.0)
    await (await toxi.connect(proxy)).echo(b"after")
    assert bytes(upstream.received) == b"beforeafter"


# -- each toxic's effect ------------------------------------------------------------------------


async def test_timeout_closes_the_connection_after_its_timeout(
    toxi: Toxi, proxy: toxiproxy.Proxy
) -> None:
    peer = await toxi.connect(proxy)
    await peer.echo()
    loop = asyncio.get_running_loop()
    start = loop.time()
    await toxi.toxic(proxy, type="timeout", attributes={"timeout": 200})
    assert await peer.read_to_end(seconds=0.2 + slack(1.0)) == b""
    assert loop.time() - start >= 0.2 - EARLY


async def test_bandwidth_limits_the_rate(toxi: Toxi, proxy: toxiproxy.Proxy) -> None:
    await toxi.toxic(proxy, type="bandwidth", attributes={"rate": 10})  # 10 KB/s
    elapsed = await (await toxi.connect(proxy)).echo(os.urandom(3000), seconds=0.3 + slack(1.0))
    assert elapsed >= 0.3 - 0.05  # the first 100 ms slice may leave early


async def test_bandwidth_zero_holds_data_until_removed(
    toxi: Toxi, upstream: Upstream, proxy: toxiproxy.Proxy
) -> None:
    peer = await toxi.connect(proxy)
    await peer.echo()
    await toxi.toxic(proxy, type="bandwidth", attributes={"rate": 0})
    await peer.send(b"held")
    await upstream.wait_for(lambda: upstream.received.endswith(b"held"))
    await peer.assert_silent()
    await toxi.call(proxy.destroy_toxic, "bandwidth_downstream")
    async with asyncio.timeout(slack(1.0)):
        assert await peer.reader.readexactly(4) == b"held"


async def test_slow_close_delays_the_close(
    toxi: Toxi, upstream: Upstream, proxy: toxiproxy.Proxy
) -> None:
    await toxi.toxic(proxy, type="slow_close", attributes={"delay": 300})
    peer = await toxi.connect(proxy)
    await peer.echo()
    loop = asyncio.get_running_loop()
    start = loop.time()
    upstream.drop_clients()
    assert await peer.read_to_end(seconds=0.3 + slack(1.0)) == b""
    assert loop.time() - start >= 0.3 - EARLY


async def test_reset_peer_resets_the_connection(toxi: Toxi, proxy: toxiproxy.Proxy) -> None:
    await toxi.toxic(proxy, type="reset_peer", attributes={"timeout": 100})
    peer = await toxi.connect(proxy)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await peer.send(b"hello")
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(0.1 + slack(1.0)):
            while await peer.reader.read(65536):
                pass
    assert loop.time() - start >= 0.1 - EARLY


async def test_slicer_delivers_data_in_delayed_slices(toxi: Toxi, proxy: toxiproxy.Proxy) -> None:
    attributes = {"average_size": 100, "size_variation": 20, "delay": 20_000}  # delay in us
    await toxi.toxic(proxy, type="slicer", attributes=attributes)
    peer = await toxi.connect(proxy)
    payload = os.urandom(1000)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await peer.send(payload)
    reads: list[bytes] = []
    async with asyncio.timeout(slack(3.0)):
        while sum(map(len, reads)) < len(payload):
            reads.append(await peer.reader.read(65536))
    assert b"".join(reads) == payload
    # At least 9 slices of at most 120 bytes, 20 ms apart.
    assert loop.time() - start >= 8 * 0.02 - EARLY
    assert len(reads) >= 3 and max(map(len, reads)) < len(payload)


async def test_limit_data_closes_after_the_limit(toxi: Toxi, proxy: toxiproxy.Proxy) -> None:
    await toxi.toxic(proxy, type="limit_data", attributes={"bytes": 10})
    peer = await toxi.connect(proxy)
    payload = os.urandom(100)
    await peer.send(payload)
    assert await peer.read_to_end() == payload[:10]


async def test_toxicity_zero_never_applies_and_one_always_does(
    toxi: Toxi, proxy: toxiproxy.Proxy
) -> None:
    await toxi.toxic(proxy, type="limit_data", toxicity=0.0, attributes={"bytes": 5})
    payload = os.urandom(100)
    for _ in range(3):
        await (await toxi.connect(proxy)).echo(payload)
    path = f"/proxies/{proxy.name}/toxics/limit_data_downstream"
    assert (await toxi.request("POST", path, {"toxicity": 1.0})).status == 200
    for _ in range(3):
        peer = await toxi.connect(proxy)
        await peer.send(payload)
        assert await peer.read_to_end() == payload[:5]


# -- the rest of the API ------------------------------------------------------------------------


async def test_toxics_list_upstream_first_in_insertion_order(
    toxi: Toxi, proxy: toxiproxy.Proxy
) -> None:
    for name, stream in (("d1", "downstream"), ("u1", "upstream"), ("d2", "downstream")):
        await toxi.toxic(proxy, type="noop", name=name, stream=stream)
    listed = (await toxi.request("GET", f"/proxies/{proxy.name}/toxics")).json()
    assert [t["name"] for t in listed] == ["u1", "d1", "d2"]
    assert [t["name"] for t in (await toxi.show(proxy.name))["toxics"]] == ["u1", "d1", "d2"]
    assert sorted(await toxi.call(proxy.toxics)) == ["d1", "d2", "u1"]


async def test_upstream_down_means_connect_then_eof(toxi: Toxi) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    proxy = await toxi.create(f"127.0.0.1:{closed_port}")
    peer = await toxi.connect(proxy)
    assert await peer.read_to_end() == b""


async def test_update_proxy_upstream_moves_new_connections(
    toxi: Toxi, upstream: Upstream, proxy: toxiproxy.Proxy
) -> None:
    async with Upstream() as other:
        reply = await toxi.request("POST", f"/proxies/{proxy.name}", {"upstream": other.address})
        assert reply.status == 200
        assert (reply.json()["upstream"], reply.json()["listen"]) == (other.address, proxy.listen)
        await (await toxi.connect(proxy)).echo(b"moved")
        assert (bytes(other.received), bytes(upstream.received)) == (b"moved", b"")


async def test_populate_creates_all_or_nothing(toxi: Toxi, upstream: Upstream) -> None:
    names = [toxi.new_name(), toxi.new_name()]
    specs = [{"name": n, "upstream": upstream.address, "listen": "127.0.0.1:0"} for n in names]
    reply = await toxi.request("POST", "/populate", specs)
    assert reply.status == 201
    created = reply.json()["proxies"]
    assert [p["name"] for p in created] == names
    assert all(port_of(p["listen"]) for p in created)
    absent = toxi.new_name()
    bad = [{"name": absent, "upstream": upstream.address}, {"upstream": upstream.address}]
    reply = await toxi.request("POST", "/populate", bad)
    # The real server writes this error without the newline of its other errors.
    assert_error(reply, 400, "missing required field: name at proxy 2", newline=False)
    assert (await toxi.request("GET", f"/proxies/{absent}")).status == 404


async def test_unknown_path_is_404_and_wrong_method_405(toxi: Toxi) -> None:
    reply = await toxi.request("GET", "/nowhere")
    assert (reply.status, reply.text.strip()) == (404, "404 page not found")
    assert (await toxi.request("DELETE", "/version")).status == 405
    assert (await toxi.request("PUT", "/proxies")).status == 405


# -- the kit's extras ---------------------------------------------------------------------------


async def test_counts_connections_and_the_connections_each_toxic_affected(
    toxi: Toxi, proxy: toxiproxy.Proxy
) -> None:
    toxi.kit_only()
    peers = [await toxi.connect(proxy) for _ in range(2)]
    for peer in peers:
        await peer.echo()
    await toxi.toxic(proxy, type="noop", name="hit", stream="upstream")
    await toxi.toxic(proxy, type="latency", name="missed", toxicity=0.0)

    async def counts() -> tuple[dict[str, int], dict[str, int]]:
        shown = await toxi.show(proxy.name)
        return {t["name"]: t["affected"] for t in shown["toxics"]}, shown["connections"]

    assert await counts() == ({"hit": 2, "missed": 0}, {"total": 2, "open": 2})
    peers.append(await toxi.connect(proxy))
    await peers[-1].echo()
    assert await counts() == ({"hit": 3, "missed": 0}, {"total": 3, "open": 3})
    peers[0].writer.close()

    async def one_closed() -> bool:
        return (await counts())[1] == {"total": 3, "open": 2}

    await eventually(one_closed, seconds=2.0)


async def test_command_serves_until_sigterm(toxi: Toxi) -> None:
    toxi.kit_only()
    args = [sys.executable, "-m", "zart_conformance.toxiproxy", "--port", "0"]
    process = await asyncio.create_subprocess_exec(*args, stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stderr is not None
        async with asyncio.timeout(slack(20.0)):
            line = (await process.stderr.readline()).decode()
        match = re.search(r"listening on (http://\S+)", line)
        assert match, line
        async with toxi.http.get(match.group(1) + "/version") as response:
            assert response.status == 200
            assert (await response.json())["version"].startswith("2.")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), slack(10.0)) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
