"""The hot path on real servers: DBAPI-level claims and completions keep SQLAlchemy's rules."""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.util import greenlet_spawn

from tests.conftest import server_url
from zart_conformance.provision import Target
from zart_ref import DatabaseUnavailable, NewTask, PoolConfig, SQLBackend
from zart_ref.backend import Lease
from zart_ref.sql import _group_binds


async def test_claim_and_complete_return_what_sqlalchemy_would(db: Target) -> None:
    """On one pooled connection, so every SQLAlchemy call after a hot one reuses its
    connection: a transaction the hot path left open would fail the next BEGIN."""
    one = PoolConfig(max_connections=1, min_connections=1)
    backend = SQLBackend(db.url, schema=db.schema, pool=one)
    try:
        await backend.migrate()
        payload = {"n": [1, 2.5, "ü"]}
        await backend.schedule([NewTask("a", "noop", payload), NewTask("b", "noop")])
        first, second = await backend.claim("w", 5, 30.0)
        assert (first.id, first.name, first.payload, first.attempt) == ("a", "noop", payload, 1)
        assert first.claimed_at.utcoffset() is not None
        assert first.lease_expires_at > first.claimed_at
        assert await backend.recover_orphans() == []
        stamp = await backend.complete(Lease(first.id, first.token), {"ok": True})
        record = await backend.get("a")
        assert record is not None
        assert (record.status, record.result, record.finished_at) == (
            "completed",
            {"ok": True},
            stamp,
        )
        await backend.release(Lease(second.id, second.token))
    finally:
        await backend.close()


async def test_a_connection_returned_inside_a_transaction_is_rolled_back(
    backend: SQLBackend,
) -> None:
    """The pool's reset is ours now (pool_reset_on_return=None): it must still roll back."""
    table = (f"{backend.schema}." if backend.schema else "") + "zart_tasks"

    def leave_open() -> None:
        fairy = backend.engine.sync_engine.pool.connect()
        cursor = fairy.cursor()
        if backend.dialect.begin_sql:
            cursor.execute(backend.dialect.begin_sql)
        cursor.execute(f"DELETE FROM {table}")
        cursor.close()
        fairy.close()  # neither committed nor rolled back

    await backend.schedule([NewTask("kept", "noop")])
    await greenlet_spawn(leave_open)
    assert await backend.get("kept") is not None


async def test_hot_transactions_end_without_a_second_rollback(mysql_url: str) -> None:
    """MySQL: a claim is lock, mark, COMMIT; the pool must not add a ROLLBACK on return."""
    target = Target(mysql_url, f"zart_test_hot_{id(object()):x}", "mysql")
    one = PoolConfig(max_connections=1, min_connections=1)
    backend = SQLBackend(target.url, schema=target.schema, pool=one)
    try:
        await backend.migrate()
        await backend.schedule([NewTask(f"t{i}", "noop") for i in range(6)])

        async def rollbacks() -> int:
            async def body(conn: Any) -> int:
                row = (await conn.execute(text("SHOW SESSION STATUS LIKE 'Com_rollback'"))).one()
                return int(row[1])

            return await backend.run(body)

        before = await rollbacks()  # this read's own pool reset rolls back once
        for _ in range(4):  # two claims with work, two empty ones
            for task in await backend.claim("w", 3, 30.0):
                await backend.complete(Lease(task.id, task.token), None)
        assert await rollbacks() == before + 1
    finally:
        await backend.close()
        await target.drop()


async def test_a_driver_error_reads_as_sqlalchemy_would(backend: SQLBackend) -> None:
    """Wrapped as SQLAlchemy wraps it (SQLite calls a missing table operational: unavailable)."""
    table = (f"{backend.schema}." if backend.schema else "") + "zart_tasks"
    await backend.run(lambda conn: conn.execute(text(f"DROP TABLE {table}")))
    with pytest.raises((DBAPIError, DatabaseUnavailable), match="zart_tasks") as caught:
        await backend.claim("w", 1, 30.0)
    error = caught.value if isinstance(caught.value, DBAPIError) else caught.value.__cause__
    assert isinstance(error, DBAPIError) and error.orig is not None
    assert "zart_tasks" in str(error.statement) and not error.connection_invalidated


@pytest.mark.parametrize("server", ["postgres", "mysql"])
async def test_an_unreachable_server_is_unavailable_on_the_hot_path(server: str) -> None:
    url = server_url(server).replace(":5432/", ":1/").replace(":3306/", ":1/")
    quick = PoolConfig(connect_timeout=1, acquire_timeout=1, statement_timeout=1)
    backend = SQLBackend(url, pool=quick)
    try:
        with pytest.raises(DatabaseUnavailable, match=re.escape("127.0.0.1:1")):
            await backend.claim("w", 1, 30.0)
        with pytest.raises(DatabaseUnavailable, match=re.escape("127.0.0.1:1")):
            await backend.complete(Lease("t", "token"), None)
    finally:
        await backend.close()


@pytest.mark.parametrize("server", ["postgres", "mysql"])
async def test_a_connection_lost_while_opening_is_unavailable(server: str) -> None:
    """The pool opens connections lazily, inside the hot path: a handshake cut short must read
    as unavailable, not escape as the driver's own exception (it once ended the worker)."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    listener = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    url = server_url(server).replace(":5432/", f":{port}/").replace(":3306/", f":{port}/")
    quick = PoolConfig(connect_timeout=1, acquire_timeout=1, statement_timeout=1)
    backend = SQLBackend(url, pool=quick)
    backend._server_checked = True  # as if the server had been reached before the cut
    try:
        with pytest.raises(DatabaseUnavailable, match=str(port)):
            await backend.claim("w", 1, 30.0)
        with pytest.raises(DatabaseUnavailable, match=str(port)):
            await backend.complete(Lease("t", "token"), None)
    finally:
        await backend.close()
        listener.close()


async def test_completions_find_their_rows_by_primary_key_during_a_drain(
    backend: SQLBackend,
) -> None:
    """A drain leaves the status indexes full of entries for rows that moved on (dead ones
    on PostgreSQL until vacuum); a completion that used them would read thousands per call."""
    await backend.schedule([NewTask(f"t{i:05d}", "noop") for i in range(1500)])
    for _ in range(10):
        claimed = await backend.claim("w", 100, 30.0)
        await asyncio.gather(*(backend.complete(Lease(c.id, c.token), None) for c in claimed))
    held = await backend.claim("w", 3, 30.0)
    items = {c.id: (c.token, "null") for c in held}
    name = backend.dialect.name
    # The statement that finds the rows: MySQL locks them first, the others update at once.
    stmt = (backend._complete_lock if name == "mysql" else backend._complete_update)(len(held))
    explain = "EXPLAIN QUERY PLAN" if name == "sqlite" else "EXPLAIN"
    plan = await backend.run_hot(
        lambda conn: conn.execute_raw(
            f"{explain} {stmt.sql}", stmt.parameters(_group_binds(items))
        ),
        single_statement=True,
    )
    # MySQL lists every candidate index too: only its `key` column says which one is used.
    rows = [[row[5]] for row in plan] if name == "mysql" else plan
    text_plan = "\n".join(" ".join(str(v) for v in row) for row in rows)
    primary_key = {
        "postgresql": "zart_tasks_pkey",
        "sqlite": "sqlite_autoindex_zart_tasks_1",
        "mysql": "PRIMARY",
    }
    assert primary_key[name] in text_plan, text_plan
    assert "zart_tasks_lease" not in text_plan and "zart_tasks_claim" not in text_plan, text_plan


def test_a_claims_shared_times_are_parsed_once_and_its_payloads_never_shared() -> None:
    """Rows of one claim share claimed_at and lease_expires_at: one parse per statement. A
    payload is mutable, so equal payload texts still decode into objects of their own."""
    claim = SQLBackend("sqlite:///unused.db")._claim_update(30.0)
    stamp, expires = "2026-12-04 10:00:00.123456", "2026-12-04 10:00:30.123456"
    raw = [(f"t{i}", "noop", '{"n":[1]}', 1, stamp, expires) for i in range(3)]
    rows = claim.rows(raw)
    assert [row[0] for row in rows] == ["t0", "t1", "t2"]
    assert rows[0][4] is rows[1][4] is rows[2][4] and rows[0][5] is rows[2][5]
    assert rows[0][4].utcoffset() is not None and rows[0][4].microsecond == 123456
    first, second = (SQLBackend._claimed(row, "token") for row in rows[:2])
    assert first.payload == second.payload == {"n": [1]} and first.payload is not second.payload


def test_fencing_tokens_are_unique_and_a_forked_process_draws_its_own() -> None:
    tokens = {SQLBackend.new_token() for _ in range(10_000)}
    assert len(tokens) == 10_000
    read, write = os.pipe()
    # libc's fork, as uWSGI's prefork calls it: Python's at-fork hooks do not run.
    pid = ctypes.CDLL(None, use_errno=True).fork()
    if pid == 0:  # the child: its token goes to the parent, then it leaves at once
        os.write(write, SQLBackend.new_token().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    parent = SQLBackend.new_token()
    assert len(child) == len(parent) == 32 and child not in tokens | {parent}
    assert child[:16] != parent[:16]
