"""Instants and delays every backend stores: the one rule, wherever a time enters zart."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from zart_ref import ConfigError, NewTask, PayloadError, Registry, RetryPolicy
from zart_ref.memory import InMemoryBackend
from zart_ref.moments import EARLIEST, LATEST, MAX_DELAY, check_delay, check_instant


@pytest.mark.parametrize(
    ("moment", "fragment"),
    [
        (datetime(2030, 1, 1), "naive datetime"),
        (LATEST, "outside the instants every backend stores"),
        (EARLIEST - timedelta(microseconds=1), "0999-12-31T23:59:59.999999"),
        # Inside datetime's range, but past it once taken to UTC.
        (datetime(9999, 12, 31, 23, tzinfo=timezone(-timedelta(hours=5))), "-05:00"),
        ("2030-01-01T00:00:00Z", "must be a datetime, got str"),
    ],
)
def test_instants_outside_the_storable_range_are_refused(moment: datetime, fragment: str) -> None:
    with pytest.raises(PayloadError, match="run_at of 'x'") as info:
        check_instant(moment, what="run_at of 'x'")
    assert fragment in str(info.value)


def test_the_edges_of_the_range_are_accepted() -> None:
    for moment in (EARLIEST, LATEST - timedelta(microseconds=1)):
        assert check_instant(moment, what="x") is moment


@pytest.mark.parametrize(
    ("seconds", "fragment"),
    [
        (float("inf"), "finite number >= 0, got inf"),
        (-0.5, "finite number >= 0, got -0.5"),
        (True, "number of seconds, got bool"),
        (MAX_DELAY * 1.01, "a thousand years"),
        (10**400, "an int of 401 digits, more than"),
        (-(10**400), "finite number >= 0, got a negative int"),
    ],
)
def test_delays_that_no_backend_can_keep_are_refused(seconds: float, fragment: str) -> None:
    with pytest.raises(PayloadError, match="delay of 'x'") as info:
        check_delay(seconds, what="delay of 'x'")
    assert fragment in str(info.value)
    assert check_delay(MAX_DELAY, what="x") == MAX_DELAY


def test_retry_policies_and_timeouts_follow_the_same_rule_as_config_errors() -> None:
    with pytest.raises(
        ConfigError, match=r"RetryPolicy\.max_delay is 1e\+12 seconds, .*thousand years"
    ):
        RetryPolicy(max_delay=1e12)
    with pytest.raises(ConfigError, match=r"RetryPolicy\.base_delay must be a finite"):
        RetryPolicy(base_delay=float("nan"))
    registry = Registry()
    with pytest.raises(ConfigError, match=r"timeout of 'h' must be a finite number > 0, got 0"):
        registry.register("h", _noop, timeout=0)
    with pytest.raises(ConfigError, match="timeout of 'h' is 1e\\+20 seconds"):
        registry.register("h", _noop, timeout=1e20)


def test_the_in_memory_backend_refuses_what_the_sql_backend_refuses() -> None:
    backend = InMemoryBackend()
    far = NewTask("far", "noop", run_at=datetime(9999, 12, 31, 12, tzinfo=UTC))
    with pytest.raises(PayloadError, match="run_at of task 'far'"):
        asyncio.run(backend.schedule([NewTask("ok", "noop"), far]))
    # Nothing written: the valid task before the refused one was not kept either.
    assert asyncio.run(backend.count_by_status()) == {}


async def _noop(payload: object) -> None:
    return None


def test_exponential_backoff_stops_at_max_delay_however_many_attempts() -> None:
    policy = RetryPolicy(max_attempts=10**6, max_delay=60, jitter=0)
    assert [policy.delay_for(n) for n in (1, 2, 1025, 10**5)] == [1.0, 2.0, 60, 60]


def test_a_repeated_id_must_be_storable_too_and_nothing_is_written() -> None:
    backend = InMemoryBackend()
    again = NewTask("a", "noop", {"x": float("nan")})
    with pytest.raises(PayloadError, match=r"payload of task 'a' \(repeated\)"):
        asyncio.run(backend.schedule([NewTask("a", "noop"), again]))
    assert asyncio.run(backend.count_by_status()) == {}
