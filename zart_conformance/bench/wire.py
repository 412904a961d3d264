"""A TCP proxy that counts the statements a client sends, read from the wire protocol.

Idle load is counted here, between the worker and its server, so the count is exact and
no other client of the server (another run, another engineer's tests) is in it. PostgreSQL:
each Execute ('E') and simple Query ('Q') message; MySQL/MariaDB: each COM_QUERY,
COM_STMT_PREPARE and COM_STMT_EXECUTE command. Neither side may use TLS through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable

_PG_STATEMENTS = frozenset(b"EQ")
_MYSQL_STATEMENTS = frozenset({0x03, 0x16, 0x17})


class PostgresCounter:
    """Parses the frontend stream: a startup packet (maybe after an SSLRequest), then typed
    messages of a type byte and a 4-byte length."""

    def __init__(self) -> None:
        self.statements = 0
        self._buffer = b""
        self._started = False

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if not self._started:
                if len(self._buffer) < 8:
                    return
                (length, code) = struct.unpack("!II", self._buffer[:8])
                if len(self._buffer) < length:
                    return
                self._buffer = self._buffer[length:]
                # 80877103: SSLRequest, 80877104: GSSENCRequest; the startup follows them.
                self._started = code not in (80877103, 80877104)
                continue
            if len(self._buffer) < 5:
                return
            kind = self._buffer[0]
            (length,) = struct.unpack("!I", self._buffer[1:5])
            if len(self._buffer) < 1 + length:
                return
            self._buffer = self._buffer[1 + length :]
            if kind in _PG_STATEMENTS:
                self.statements += 1


class MySQLCounter:
    """Parses client packets (3-byte length, sequence id); a command is a packet with
    sequence 0, its first byte the command."""

    def __init__(self) -> None:
        self.statements = 0
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 4:
            length = int.from_bytes(self._buffer[:3], "little")
            if len(self._buffer) < 4 + length:
                return
            sequence, command = self._buffer[3], self._buffer[4] if length else -1
            self._buffer = self._buffer[4 + length :]
            if sequence == 0 and command in _MYSQL_STATEMENTS:
                self.statements += 1


COUNTERS: dict[str, Callable[[], PostgresCounter | MySQLCounter]] = {
    "postgresql": PostgresCounter,
    "mysql": MySQLCounter,
}


class CountingProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to ``upstream``, counting."""

    def __init__(self, dialect: str, host: str, port: int) -> None:
        self._make = COUNTERS[dialect]
        self._upstream = (host, port)
        self._counters: list[PostgresCounter | MySQLCounter] = []
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def statements(self) -> int:
        return sum(counter.statements for counter in self._counters)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counter = self._make()
        self._counters.append(counter)
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        pipes = [
            asyncio.create_task(_pipe(reader, up_writer, counter.feed)),
            asyncio.create_task(_pipe(up_reader, writer, None)),
        ]
        self._pipes.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for pipe in pipes:
            pipe.cancel()
            self._pipes.discard(pipe)
        for end in (writer, up_writer):
            end.close()


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    observe: Callable[[bytes], None] | None,
) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            if observe is not None:
                observe(data)
            writer.write(data)
            await writer.drain()
