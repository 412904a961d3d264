"""The backend contract against real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.conftest import DIALECTS, SCALE, eventually, new_namespace, server_url
from zart_conformance.provision import Target
from zart_ref import Lease, LeaseLost, NewTask, PayloadError, Pending, SQLBackend, sql
from zart_ref.moments import MAX_DELAY

HOUR = timedelta(hours=1)
# Row sizes that exercise every way a chunk ends (see test_chunks_are_bounded...).
SIZES = [10, 10, 10, 10, 150, 40, 40, 30, 10, 10, 95]


async def wait_for_db_time(backend: SQLBackend, moment: datetime) -> None:
    """Let the database clock pass ``moment`` (a lease expiry)."""

    async def passed() -> bool:
        return await backend.now() > moment

    await eventually(passed)


async def test_migrate_is_idempotent(backend: SQLBackend) -> None:
    await backend.migrate()
    await backend.migrate()
    assert await backend.count_by_status() == {}


async def test_concurrent_migrations_are_safe(db: Target) -> None:
    backends = [SQLBackend(db.url, schema=db.schema) for _ in range(4)]
    try:
        await asyncio.gather(*(b.migrate() for b in backends))
        assert await backends[0].schedule([NewTask("a", "noop")]) == [True]
    finally:
        for b in backends:
            await b.close()


async def test_scheduling_an_existing_id_keeps_the_original(backend: SQLBackend) -> None:
    assert await backend.schedule([NewTask("a", "noop", {"v": 1}), NewTask("b", "noop")]) == [
        True,
        True,
    ]
    assert await backend.schedule([NewTask("a", "noop", {"v": 2}), NewTask("c", "noop")]) == [
        False,
        True,
    ]
    record = await backend.get("a")
    assert record is not None and record.payload == {"v": 1}


async def test_one_call_mixes_instants_delays_repeats_and_existing_ids(backend: SQLBackend) -> None:
    """Every way a due time is given, in one bulk call (one statement on PostgreSQL)."""
    at = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    await backend.schedule([NewTask("old", "noop", {"v": "old"})])
    before = await backend.now()
    created = await backend.schedule(
        [
            NewTask("at", "noop", {"x": [1, "é"]}, run_at=at),
            NewTask("now", "noop"),
            NewTask("old", "noop", {"v": "new"}),
            NewTask("soon", "noop", delay=90.5),
            NewTask("now", "other"),  # repeated in the call: the first one wins
            NewTask("soon2", "noop", delay=90.5),
        ]
    )
    after = await backend.now()
    assert created == [True, True, False, True, False, True]
    records = {
        r.id: r for r in [await backend.get(i) for i in ("at", "now", "old", "soon", "soon2")] if r
    }
    assert records["at"].run_at == at and records["at"].payload == {"x": [1, "é"]}
    assert before <= records["now"].run_at <= after and records["now"].name == "noop"
    assert records["old"].payload == {"v": "old"}
    delay = timedelta(seconds=90.5)
    for soon in ("soon", "soon2"):
        assert before + delay <= records[soon].run_at <= after + delay


async def test_claims_are_disjoint_and_bounded_under_concurrency(backend: SQLBackend) -> None:
    await backend.schedule([NewTask(f"t{i:03d}", "noop") for i in range(60)])
    claimers = [SQLBackend(backend.url, schema=backend.schema) for _ in range(6)]
    try:
        batches = await asyncio.gather(*(c.claim(f"w{i}", 7, 30) for i, c in enumerate(claimers)))
        batches += await asyncio.gather(*(c.claim(f"w{i}", 7, 30) for i, c in enumerate(claimers)))
    finally:
        for c in claimers:
            await c.close()
    ids = [task.id for batch in batches for task in batch]
    assert all(len(batch) <= 7 for batch in batches)
    assert len(ids) == len(set(ids)) == 60
    # One fresh token per claim, never shared between claims.
    tokens = {task.token for batch in batches for task in batch}
    assert len(tokens) == sum(1 for batch in batches if batch)


async def test_leases_are_computed_with_the_database_clock(backend: SQLBackend) -> None:
    await backend.schedule([NewTask("a", "noop")])
    before = await backend.now()
    (task,) = await backend.claim("w", 1, 42.5)
    after = await backend.now()
    assert task.lease_expires_at - task.claimed_at == timedelta(seconds=42.5)
    assert before <= task.claimed_at <= after
    assert task.claimed_at.tzinfo is not None
    assert task.claimed_at.utcoffset() == timedelta(0)


async def test_delayed_tasks_are_not_due_before_their_time(backend: SQLBackend) -> None:
    await backend.schedule([NewTask("later", "noop", delay=3600), NewTask("now", "noop")])
    claimed = await backend.claim("w", 10, 30)
    assert [t.id for t in claimed] == ["now"]


async def test_pending_sees_what_a_claim_and_a_sweep_would_find(backend: SQLBackend) -> None:
    assert await backend.pending() == Pending(due=False, expired=False)
    await backend.schedule([NewTask("later", "noop", delay=3600)])
    assert await backend.pending() == Pending(due=False, expired=False)
    await backend.schedule([NewTask("now", "noop")])
    assert await backend.pending() == Pending(due=True, expired=False)
    (task,) = await backend.claim("w", 10, 0.2 * SCALE)
    assert await backend.pending() == Pending(due=False, expired=False)
    await wait_for_db_time(backend, task.lease_expires_at)
    assert await backend.pending() == Pending(due=False, expired=True)
    assert await backend.recover_orphans() == ["now"]
    assert await backend.pending() == Pending(due=True, expired=False)


async def test_every_write_with_a_stale_token_is_fenced(backend: SQLBackend) -> None:
    await backend.schedule([NewTask("a", "noop")])
    (old,) = await backend.claim("w-old", 1, 0.3 * SCALE)
    assert await backend.recover_orphans() == []  # not expired yet: never reclaimed early
    await wait_for_db_time(backend, old.lease_expires_at)
    assert await backend.recover_orphans() == ["a"]
    (new,) = await backend.claim("w-new", 1, 30)
    assert new.token != old.token and new.attempt == 2
    stale = Lease("a", old.token)
    assert await backend.renew([stale], 30) == {}
    for write in (
        backend.complete(stale, 1),
        backend.fail(stale, "x", None),
        backend.fail(stale, "x", 1.0),
        backend.release(stale),
    ):
        with pytest.raises(LeaseLost):
            await write
    record = await backend.get("a")
    assert record is not None and record.status == "running" and record.locked_by == "w-new"
    assert set(await backend.renew([Lease("a", new.token)], 30)) == {"a"}
    await backend.complete(Lease("a", new.token), {"ok": True})
    with pytest.raises(LeaseLost):
        await backend.complete(Lease("a", new.token), {"ok": True})


async def test_release_returns_the_task_without_counting_the_attempt(backend: SQLBackend) -> None:
    await backend.schedule([NewTask("a", "noop")])
    (task,) = await backend.claim("w", 1, 30)
    await backend.release(Lease("a", task.token))
    record = await backend.get("a")
    assert record is not None and (record.status, record.attempts) == ("scheduled", 0)
    (again,) = await backend.claim("w", 1, 30)
    assert again.attempt == 1


async def test_fail_retries_on_the_database_clock_then_ends_failed(backend: SQLBackend) -> None:
    await backend.schedule([NewTask("a", "noop")])
    (task,) = await backend.claim("w", 1, 30)
    await backend.fail(Lease("a", task.token), "boom 1", 3600)
    record = await backend.get("a")
    assert record is not None and record.status == "scheduled" and record.error == "boom 1"
    assert record.run_at - await backend.now() > timedelta(seconds=3500)
    assert await backend.claim("w", 1, 30) == []


async def test_payloads_and_results_round_trip_exactly(backend: SQLBackend) -> None:
    payload = {"big": 2**63 + 7, "neg": -(2**70), "text": "naïve 🦄 𝄞", "nested": {"l": [1, [2]]}}
    await backend.schedule([NewTask("a", "echo", payload)])
    (task,) = await backend.claim("w", 1, 30)
    assert task.payload == payload
    await backend.complete(Lease("a", task.token), {"echo": payload})
    record = await backend.get("a")
    assert record is not None and record.result == {"echo": payload}


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"x": float("nan")}, "NaN"),
        ({"x": "a\x00b"}, "NUL"),
        ({"x": datetime(2026, 1, 1)}, "naive datetime"),
    ],
)
async def test_unstorable_payloads_are_rejected_at_schedule_time(
    backend: SQLBackend, payload: object, fragment: str
) -> None:
    with pytest.raises(PayloadError, match=fragment) as info:
        await backend.schedule([NewTask("bad-task", "noop", payload)])
    assert "bad-task" in str(info.value)
    assert await backend.get("bad-task") is None


async def test_naive_run_at_is_rejected(backend: SQLBackend) -> None:
    with pytest.raises(PayloadError, match="naive datetime"):
        await backend.schedule([NewTask("a", "noop", run_at=datetime(2030, 1, 1))])
    await backend.schedule([NewTask("b", "noop", run_at=datetime(2030, 1, 1, tzinfo=UTC))])
    record = await backend.get("b")
    assert record is not None and record.run_at == datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("server", ["postgres", "mysql"])
async def test_schemas_isolate_tasks(server: str) -> None:
    targets = [Target(server_url(server), new_namespace(), DIALECTS[server]) for _ in range(2)]
    one, two = (SQLBackend(t.url, schema=t.schema) for t in targets)
    try:
        for b in (one, two):
            await b.migrate()
        await one.schedule([NewTask("only-in-one", "noop")])
        assert await two.get("only-in-one") is None
        assert await one.count_by_status() == {"scheduled": 1}
    finally:
        for b in (one, two):
            await b.close()
        for target in targets:
            await target.drop()


async def test_a_repeated_id_in_one_call_is_created_once(backend: SQLBackend) -> None:
    tasks = [NewTask("same", "noop", {"v": 1}), NewTask("same", "noop", {"v": 2})]
    assert await backend.schedule(tasks) == [True, False]
    record = await backend.get("same")
    assert record is not None and record.payload == {"v": 1}


@pytest.mark.parametrize(
    ("task", "fragment"),
    [
        (NewTask("x" * 256, "noop"), "at most 255 fit"),
        (NewTask("trailing ", "noop"), "trailing white space"),
        (NewTask("", "noop"), "non-empty string"),
        (NewTask("ok", ""), "handler name of task 'ok' must be a non-empty string"),
        (NewTask("ok", "noop", delay=float("nan")), "finite number"),
        (NewTask("ok", "noop", delay=-1), "delay of task 'ok' must be a finite number >= 0"),
        (NewTask("ok", "noop", delay="5"), "delay of task 'ok' must be a number of seconds"),  # type: ignore[arg-type]
        (NewTask("ok", "noop", delay=3e11), "delay of task 'ok' is 3e\\+11 seconds"),
        (NewTask("ok", "noop", run_at=datetime(9999, 12, 31, 1, tzinfo=UTC)), "9999-12-31T01"),
        (NewTask("ok", "noop", run_at=datetime(999, 1, 1, tzinfo=UTC)), "run_at of task 'ok'"),
        (
            NewTask("ok", "noop", run_at=datetime(9999, 12, 31, 23, tzinfo=timezone(-HOUR))),
            "outside the instants every backend stores",
        ),
        (NewTask("ok", "noop", {"s": "\ud800"}), "lone surrogate"),
    ],
)
async def test_ids_names_and_delays_every_backend_cannot_keep_are_refused(
    backend: SQLBackend, task: NewTask, fragment: str
) -> None:
    with pytest.raises(PayloadError, match=fragment):
        await backend.schedule([task])
    assert await backend.count_by_status() == {}


async def test_the_latest_storable_due_times_round_trip(backend: SQLBackend) -> None:
    """The edges of the range every backend accepts are stored and read back exactly."""
    last = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)
    first = datetime(1000, 1, 1, tzinfo=UTC)
    before = await backend.now()
    assert await backend.schedule(
        [
            NewTask("last", "noop", run_at=last),
            NewTask("first", "noop", run_at=first),
            NewTask("far", "noop", delay=MAX_DELAY),
        ]
    ) == [True, True, True]
    records = {i: await backend.get(i) for i in ("last", "first", "far")}
    assert records["last"] and records["last"].run_at == last
    assert records["first"] and records["first"].run_at == first
    far = records["far"]
    assert far and far.run_at - before >= timedelta(seconds=MAX_DELAY)


async def test_concurrent_schedules_of_overlapping_ids_never_deadlock(backend: SQLBackend) -> None:
    """Eight calls, each a random 3/4 of the same ids in random order with mixed delays: every
    call succeeds (no deadlock or retry exhausted) and every id is created exactly once."""
    ids = [f"t{i:04d}" for i in range(1200)]

    async def one(seed: int) -> list[tuple[str, bool]]:
        rng = random.Random(seed)
        chosen = rng.sample(ids, 900)
        tasks = [NewTask(i, "noop", {"by": seed}, delay=rng.choice([0, 60])) for i in chosen]
        return list(zip(chosen, await backend.schedule(tasks), strict=True))

    results = await asyncio.gather(*(one(seed) for seed in range(8)))
    created = [task_id for result in results for task_id, new in result if new]
    assert sorted(created) == sorted(set(created))
    assert set(created) == set().union(*({i for i, _ in result} for result in results))
    # Each id's stored payload names the one call that says it created it.
    creator = {task_id: seed for seed, r in enumerate(results) for task_id, new in r if new}
    for task_id in random.Random(0).sample(sorted(creator), 20):
        record = await backend.get(task_id)
        assert record is not None and record.payload == {"by": creator[task_id]}


async def test_a_bulk_schedule_split_by_size_keeps_every_flag_in_order(
    backend: SQLBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks bounded by characters (as PostgreSQL's 1 GB message limit needs) split one call
    into many statements; flags still follow the caller's order, repeats and existing ids."""
    monkeypatch.setattr(sql, "_CHUNK_CHARS", 2_000)
    await backend.schedule([NewTask("k05", "noop")])
    tasks = [NewTask(f"k{i:02d}", "noop", "x" * 300) for i in reversed(range(40))]
    tasks.append(NewTask("k07", "noop", "again"))
    flags = await backend.schedule(tasks)
    assert flags == [task.id != "k05" for task in tasks[:-1]] + [False]
    assert await backend.count_by_status() == {"scheduled": 40}
    record = await backend.get("k07")
    assert record is not None and record.payload == "x" * 300


def test_chunks_are_bounded_by_rows_and_by_characters() -> None:
    rows = [{"id": f"{i}", "name": "n", "payload": "p" * size} for i, size in enumerate(SIZES)]
    chunks = list(sql._chunks(rows, 3, 100))
    assert [row for chunk in chunks for row in chunk] == rows
    for chunk in chunks:
        chars = sum(len(r["id"]) + len(r["name"]) + len(r["payload"]) for r in chunk)
        assert len(chunk) <= 3 and (chars <= 100 or len(chunk) == 1)
    assert [len(chunk) for chunk in chunks] == [3, 1, 1, 2, 3, 1]


async def test_one_task_object_twice_or_a_generator_flags_like_any_repeat(
    backend: SQLBackend,
) -> None:
    task = NewTask("same", "noop")
    assert await backend.schedule([task, task]) == [True, False]
    assert await backend.schedule(NewTask(f"g{i}", "noop") for i in range(3)) == [True] * 3
    with pytest.raises(PayloadError, match="repeated"):
        await backend.schedule([NewTask("r", "noop"), NewTask("r", "noop", float("inf"))])
    assert await backend.get("r") is None


async def test_concurrent_schedules_into_one_index_gap_never_deadlock(backend: SQLBackend) -> None:
    """Disjoint new ids that fall in one gap of the primary key: on MySQL, locking the absent
    ids before inserting took gap locks, and two such schedules deadlocked on their inserts."""
    for round_ in range(10):
        calls = [
            [NewTask(f"r{round_}-{i:03d}", "noop") for i in range(call, 160, 8)]
            for call in range(8)
        ]
        results = await asyncio.gather(*(backend.schedule(tasks) for tasks in calls))
        assert all(all(flags) for flags in results)
    assert await backend.count_by_status() == {"scheduled": 1600}
