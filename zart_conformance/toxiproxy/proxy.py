"""The TCP proxying engine: listeners, connections, and the toxic chain of each direction.

Every accepted client gets an upstream socket and two pipes (client -> server is "upstream",
server -> client is "downstream"). A pipe is a reader task, one task per toxic (a *stage*) and a
writer task, joined by queues. Stages look up their successor when they pass data on, so a toxic
is attached to or detached from a live connection by relinking, without losing or reordering
bytes. A toxic that is interrupted (updated or removed) keeps what it held: an update re-runs it,
a removal passes it on, which is how removing a latency toxic releases pending data.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger("zart.toxiproxy")

UPSTREAM = "upstream"
DOWNSTREAM = "downstream"
STREAMS = (UPSTREAM, DOWNSTREAM)

# Every toxic type and its integer attributes (milliseconds unless the name says otherwise).
TOXIC_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "slicer": ("average_size", "size_variation", "delay"),
    "limit_data": ("bytes",),
    "noop": (),
}

READ_SIZE = 32 * 1024
# Bytes a pipe may hold between reading and writing before it stops reading: a toxic that holds
# data (bandwidth 0, a long latency) then pushes back on the sender as a real network would.
HIGH_WATER = 1024 * 1024
# How long a graceful close may wait for the peer to take the last bytes before it is aborted.
CLOSE_GRACE = 2.0


class ListenError(Exception):
    """A proxy could not listen on its address (reported by the API as a 500)."""


@dataclass
class Toxic:
    """A toxic as the API manages it; stages read its attributes, so an update reaches them."""

    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, int]
    # Connections on which the toxic was active (its toxicity roll succeeded): the evidence that
    # a fault reached live traffic.
    affected: int = 0

    @property
    def direction(self) -> str:
        return self.stream.lower()


@dataclass
class Chunk:
    """Bytes read from one socket, stamped with the loop time they were read (or, after a
    latency toxic, released), which is what a later latency counts from."""

    data: bytes
    stamp: float


# What flows through a pipe: chunks, then None for end of stream.
Item = Chunk | None


class _Inbox:
    """Something a stage can pass items to: the next stage or the pipe's writer."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Item] = asyncio.Queue()

    def put(self, item: Item) -> None:
        self.inbox.put_nowait(item)


class Stage(_Inbox):
    """One toxic on one pipe of one connection: a task between its inbox and the next stage."""

    def __init__(self, pipe: Pipe, toxic: Toxic, following: _Inbox) -> None:
        super().__init__()
        self.pipe = pipe
        self.toxic = toxic
        self.next = following
        self.active = False
        self.counted = False
        self.sent = 0  # limit_data's count, kept across updates of the toxic
        self._held: list[Item] = []  # at most one item, taken from the inbox and not passed on
        self.task: asyncio.Task[None] | None = None

    def attr(self, name: str) -> int:
        return self.toxic.attributes.get(name, 0)

    def roll(self) -> None:
        """Decide, per connection, whether the toxic applies; count the connection once."""
        self.active = self.pipe.rng.random() < self.toxic.toxicity
        if self.active and not self.counted:
            self.counted = True
            self.toxic.affected += 1

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"toxic {self.toxic.name}")

    async def _run(self) -> None:
        behaviour = BEHAVIOURS[self.toxic.type] if self.active else _noop
        try:
            await behaviour(self)
        except Exception:
            log.exception("toxic %s failed; closing its connection", self.toxic.name)
            self.close()

    async def interrupt(self) -> None:
        """Stop the running toxic; what it held stays held."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task])  # our own cancellation still propagates

    def leftovers(self) -> list[Item]:
        """Everything held or queued, in order, leaving the stage empty (after interrupt)."""
        items, self._held = self._held, []
        while not self.inbox.empty():
            items.append(self.inbox.get_nowait())
        return items

    async def take(self) -> Item:
        """The held item, or the next one from the inbox (then held until passed on)."""
        if not self._held:
            self._held.append(await self.inbox.get())
        return self._held[0]

    def forward(self, size: int | None = None) -> None:
        """Pass on the held item, or only its first ``size`` bytes."""
        item = self._held[0]
        if item is not None and size is not None and size < len(item.data):
            self._held[0] = Chunk(item.data[size:], item.stamp)
            item = Chunk(item.data[:size], item.stamp)
        else:
            self._held.clear()
        self.next.put(item)

    def drop(self) -> None:
        """Discard the held item (a chunk, or what is left of it)."""
        item = self._held.pop()
        if item is not None:
            self.pipe.release(len(item.data))

    def close(self) -> None:
        """End the stream here: drop what is held and tell the rest of the chain."""
        if self._held:
            self.drop()
        self.next.put(None)


async def _sleep_until(when: float) -> None:
    delay = when - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _noop(stage: Stage) -> None:
    """Pass everything on: also what a toxic does on a connection its toxicity spared."""
    while await stage.take() is not None:
        stage.forward()
    stage.forward()


async def _latency(stage: Stage) -> None:
    """Hold each chunk until latency +/- jitter after it was read, keeping the pipe full."""
    while (chunk := await stage.take()) is not None:
        delay = stage.attr("latency")
        jitter = stage.attr("jitter")
        if jitter > 0:
            delay += stage.pipe.rng.randrange(-jitter, jitter)
        due = chunk.stamp + delay / 1000
        await _sleep_until(due)
        chunk.stamp = due  # as the real server does, so chained latencies add up
        stage.forward()
    stage.forward()


async def _bandwidth(stage: Stage) -> None:
    """Pass on ``rate`` KB/s in slices of 100 ms worth; rate 0 holds data but keeps the line."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    while (chunk := await stage.take()) is not None:
        rate = stage.attr("rate") * 1000  # bytes per second
        if rate <= 0:
            await asyncio.Event().wait()  # hold everything until the toxic changes
        size = min(len(chunk.data), max(rate // 10, 1))  # at most 100 ms worth at a time
        due = max(due, loop.time()) + size / rate
        await _sleep_until(due)
        stage.forward(size)
    stage.forward()


async def _slow_close(stage: Stage) -> None:
    """Data flows; the end of the stream waits ``delay``, so the peer sees a late close."""
    while await stage.take() is not None:
        stage.forward()
    await asyncio.sleep(stage.attr("delay") / 1000)
    stage.forward()


async def _timeout(stage: Stage) -> None:
    """Drop all data; close after ``timeout`` without data, or never when it is 0."""
    timeout = stage.attr("timeout") / 1000
    while True:
        try:
            async with asyncio.timeout(timeout if timeout > 0 else None):
                item = await stage.take()
        except TimeoutError:
            stage.close()
            return
        if item is None:
            stage.forward()
            return
        stage.drop()


async def _reset_peer(stage: Stage) -> None:
    """On the first data, wait ``timeout`` then end the stream (RST where SO_LINGER 0 is set)."""
    await stage.take()
    await asyncio.sleep(stage.attr("timeout") / 1000)
    stage.close()


def slices(total: int, average: int, variation: int, rng: random.Random) -> list[int]:
    """Slice sizes for ``total`` bytes, split in about halves as the real slicer does."""
    sizes: list[int] = []
    pending = [total]
    while pending:
        size = pending.pop()
        if size - average <= variation or size <= 1:
            sizes.append(size)
            continue
        shift = rng.randrange(-variation, variation) if variation > 0 else 0
        left = min(max(size // 2 + shift, 1), size - 1)
        pending += [size - left, left]
    return sizes


async def _slicer(stage: Stage) -> None:
    """Split chunks into small writes ``delay`` microseconds apart, as a slow network would."""
    while (chunk := await stage.take()) is not None:
        average, variation = stage.attr("average_size"), stage.attr("size_variation")
        for size in slices(len(chunk.data), average, variation, stage.pipe.rng):
            stage.forward(size)
            await asyncio.sleep(stage.attr("delay") / 1_000_000)
    stage.forward()


async def _limit_data(stage: Stage) -> None:
    """Pass on ``bytes`` bytes in all, then close: a connection cut mid-response."""
    while (chunk := await stage.take()) is not None:
        allowed = max(stage.attr("bytes") - stage.sent, 0)
        if allowed >= len(chunk.data):
            stage.sent += len(chunk.data)
            stage.forward()
        else:
            if allowed:
                stage.sent += allowed
                stage.forward(allowed)
            stage.drop()
        if stage.sent >= stage.attr("bytes"):
            stage.close()
            return
    stage.forward()


BEHAVIOURS: dict[str, Callable[[Stage], Awaitable[None]]] = {
    "latency": _latency,
    "bandwidth": _bandwidth,
    "slow_close": _slow_close,
    "timeout": _timeout,
    "reset_peer": _reset_peer,
    "slicer": _slicer,
    "limit_data": _limit_data,
    "noop": _noop,
}
# Removing one of these closes the connections it was active on.
CLOSES_ON_REMOVAL = frozenset({"timeout"})


class _Writer(_Inbox):
    """The end of a pipe: writes what reaches it; end of stream closes the connection."""

    def __init__(self, pipe: Pipe, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self.pipe = pipe
        self.writer = writer

    async def run(self) -> None:
        while (item := await self.inbox.get()) is not None:
            if self.writer.is_closing():
                return
            self.writer.write(item.data)
            try:
                await self.writer.drain()
            except OSError:
                return
            self.pipe.release(len(item.data))


class Pipe:
    """One direction of a connection: reader, then a stage per toxic, then writer."""

    def __init__(
        self,
        connection: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        rng: random.Random,
    ) -> None:
        self.connection = connection
        self.reader = reader
        self.rng = rng
        self.stages: list[Stage] = []
        self.writer = _Writer(self, writer)
        self._in_flight = 0
        self._room = asyncio.Event()
        self._room.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    @property
    def head(self) -> _Inbox:
        return self.stages[0] if self.stages else self.writer

    def start(self) -> None:
        for stage in self.stages:
            stage.start()
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self.writer.run())]
        # The writer ends at end of stream or on a write error: either way the connection ends.
        self._tasks[1].add_done_callback(lambda _: self.connection.close())

    def cancel(self) -> list[asyncio.Task[None]]:
        """Cancel every task of the pipe; returns them to be awaited."""
        self._stopped = True
        tasks = [*self._tasks, *(s.task for s in self.stages if s.task is not None)]
        for task in tasks:
            task.cancel()
        return tasks

    def release(self, size: int) -> None:
        self._in_flight -= size
        if self._in_flight < HIGH_WATER:
            self._room.set()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._room.wait()
            try:
                data = await self.reader.read(READ_SIZE)
            except OSError:
                data = b""
            if not data:
                self.head.put(None)
                return
            self._in_flight += len(data)
            if self._in_flight >= HIGH_WATER:
                self._room.clear()
            self.head.put(Chunk(data, loop.time()))

    def add(self, toxic: Toxic, *, live: bool) -> None:
        """Append a stage for ``toxic`` at the end of the chain, in front of the writer."""
        stage = Stage(self, toxic, self.writer)
        stage.roll()
        if self.stages:
            self.stages[-1].next = stage
        self.stages.append(stage)
        if live and not self._stopped:
            stage.start()

    def _stage(self, toxic: Toxic) -> Stage | None:
        return next((s for s in self.stages if s.toxic is toxic), None)

    async def update(self, toxic: Toxic) -> None:
        """Re-run the toxic with its new settings; a new toxicity is rolled again."""
        stage = self._stage(toxic)
        if stage is None:
            return
        await stage.interrupt()
        stage.roll()
        if not self._stopped:
            stage.start()

    async def remove(self, toxic: Toxic) -> None:
        """Unlink the toxic's stage, passing on what it held, or closing if it must."""
        stage = self._stage(toxic)
        if stage is None:
            return
        await stage.interrupt()
        # From here to the end nothing awaits, so no byte can overtake the leftovers.
        if stage.active and toxic.type in CLOSES_ON_REMOVAL:
            dropped = stage.leftovers()
            self.release(sum(len(item.data) for item in dropped if item is not None))
            stage.next.put(None)
        else:
            for item in stage.leftovers():
                stage.next.put(item)
        index = self.stages.index(stage)
        if index:
            self.stages[index - 1].next = stage.next
        del self.stages[index]


def _set_reset_on_close(writer: asyncio.StreamWriter) -> None:
    """SO_LINGER 0: closing the socket sends RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def close_stream(writer: asyncio.StreamWriter) -> None:
    """Close a socket gracefully within CLOSE_GRACE, else abort it."""
    writer.close()
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Connection:
    """One proxied client and its upstream socket, joined by the two pipes."""

    def __init__(
        self, client: Stream, upstream: Stream, toxics: Iterable[Toxic], rng: random.Random
    ) -> None:
        self._sockets = (client[1], upstream[1])
        self.pipes = {
            UPSTREAM: Pipe(self, client[0], upstream[1], rng),
            DOWNSTREAM: Pipe(self, upstream[0], client[1], rng),
        }
        toxics = list(toxics)
        for toxic in toxics:
            self.pipes[toxic.direction].add(toxic, live=False)
        # As in the real server, reset_peer resets only the connections it was present at.
        self.reset = any(toxic.type == "reset_peer" for toxic in toxics)
        if self.reset:
            for writer in self._sockets:
                _set_reset_on_close(writer)
        self._closing = asyncio.Event()

    def close(self) -> None:
        self._closing.set()

    async def run(self) -> None:
        """Proxy until either direction ends or close() is called, then close both sockets."""
        try:
            for pipe in self.pipes.values():
                pipe.start()
            await self._closing.wait()
        finally:
            # Everything is set going before the first await, so that a second cancellation
            # cannot leave a socket open.
            tasks = [task for pipe in self.pipes.values() for task in pipe.cancel()]
            for writer in self._sockets:
                if self.reset:
                    writer.transport.abort()
                else:
                    writer.close()
            try:
                async with asyncio.timeout(CLOSE_GRACE):
                    closed = (writer.wait_closed() for writer in self._sockets)
                    await asyncio.gather(*tasks, *closed, return_exceptions=True)
            except TimeoutError:
                pass
            finally:
                for writer in self._sockets:
                    writer.transport.abort()  # a no-op once closed; else the peer took too long


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as a host and a port number."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address}: missing port in address")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Proxy:
    """A named listener whose connections go to one upstream through the proxy's toxics."""

    def __init__(
        self, name: str, listen: str, upstream: str, rng: random.Random | None = None
    ) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.rng = rng or random.Random()
        self.toxics: dict[str, Toxic] = {}
        self.connections: set[Connection] = set()
        self.total_connections = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        # Bumped at each start and stop, so a client accepted just before a stop is turned away.
        self._generations = itertools.count()
        self._generation = next(self._generations)

    @property
    def enabled(self) -> bool:
        return self._server is not None

    def ordered_toxics(self) -> list[Toxic]:
        """Upstream toxics, then downstream ones, each in the order they were added."""
        return [t for d in STREAMS for t in self.toxics.values() if t.direction == d]

    async def start(self) -> None:
        """Listen; the listen address is rewritten to the bound one (port 0 becomes real)."""
        if self._server is not None:
            return
        try:
            host, port = split_address(self.listen)
        except ValueError as exc:
            raise ListenError(f"listen tcp {exc}") from None
        try:
            sock = await self._bind(host, port)
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise ListenError(f"listen tcp {self.listen}: bind: {reason}") from None
        generation = self._generation = next(self._generations)
        try:
            self._server = await asyncio.start_server(
                lambda r, w: self._accept(r, w, generation), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        bound_host, bound_port = sock.getsockname()[:2]
        self.listen = join_address(bound_host, bound_port)

    @staticmethod
    async def _bind(host: str, port: int) -> socket.socket:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def stop(self) -> None:
        """Close the listener, then every connection on both sides."""
        self._generation = next(self._generations)
        if self._server is not None:
            self._server.close()  # the listening socket is closed at once
            self._server = None
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()  # a connection then closes both its sockets
        await asyncio.gather(*handlers, return_exceptions=True)

    async def update(self, listen: str, upstream: str, enabled: bool) -> None:
        """As the real server: a new address restarts the proxy; ``enabled`` starts or stops."""
        if listen != self.listen or upstream != self.upstream:
            await self.stop()
            self.listen, self.upstream = listen, upstream
        if enabled and not self.enabled:
            await self.start()
        elif not enabled:
            await self.stop()

    def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, generation: int
    ) -> None:
        """Start serving a client in a task of our own, which stop() may cancel.

        (A coroutine callback would run in asyncio's task, which must not end cancelled.)
        """
        task = asyncio.create_task(self._serve(reader, writer, generation))
        self._handlers.add(task)

        def served(task: asyncio.Task[None]) -> None:
            self._handlers.discard(task)
            writer.transport.abort()  # no-op once closed; a task cancelled before it ran did not

        task.add_done_callback(served)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, generation: int
    ) -> None:
        if generation != self._generation:
            await close_stream(writer)
            return
        try:
            host, port = split_address(self.upstream)
            upstream = await asyncio.open_connection(host, port)
        except (OSError, ValueError):
            # As the real server: the client's connect succeeded; it now reads EOF.
            await close_stream(writer)
            return
        connection = Connection((reader, writer), upstream, self.ordered_toxics(), self.rng)
        self.connections.add(connection)
        self.total_connections += 1
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)

    async def add_toxic(self, toxic: Toxic) -> None:
        self.toxics[toxic.name] = toxic
        for connection in self.connections:
            connection.pipes[toxic.direction].add(toxic, live=True)

    async def update_toxic(self, toxic: Toxic) -> None:
        await asyncio.gather(
            *(c.pipes[toxic.direction].update(toxic) for c in list(self.connections))
        )

    async def remove_toxic(self, toxic: Toxic) -> None:
        del self.toxics[toxic.name]
        await asyncio.gather(
            *(c.pipes[toxic.direction].remove(toxic) for c in list(self.connections))
        )

    async def remove_all_toxics(self) -> None:
        for toxic in list(self.toxics.values()):
            await self.remove_toxic(toxic)
