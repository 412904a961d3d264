"""The checker judges synthetic histories shaped like the real event log.

Wall time ``t`` and the database times (ISO strings) use the same scale here: second ``s`` of
the run is ``at(s)``. Each test builds the smallest history that shows one rule.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from zart_conformance.checker import check
from zart_conformance.eventlog import History

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def at(second: float) -> str:
    return (T0 + timedelta(seconds=second)).isoformat()


class Log:
    """Builds a history; the token of a claim is ``<task>-<worker><gen>``."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def add(self, kind: str, src: str, t: float, **data: Any) -> Log:
        self.events.append({"t": t, "src": src, "seq": len(self.events) + 1, "kind": kind, **data})
        return self

    def claim(
        self, src: str, t: float, *tasks: str, limit: int = 10, lease: float = 10, gen: str = ""
    ) -> Log:
        items = [
            {
                "id": task,
                "token": f"{task}-{src}{gen}",
                "attempt": 1,
                "claimed_at": at(t),
                "lease_expires_at": at(t + lease),
            }
            for task in tasks
        ]
        return self.add("claimed", src, t, limit=limit, tasks=items)

    def finish(self, src: str, t: float, task: str, kind: str = "completed", gen: str = "") -> Log:
        """A completed, released or failed write; a failure here is retried after 1 s."""
        extra = {"retry_in": 1.0} if kind == "failed" else {}
        return self.add(kind, src, t, task=task, token=f"{task}-{src}{gen}", at=at(t), **extra)

    def handler(self, kind: str, src: str, t: float, task: str) -> Log:
        return self.add(kind, src, t, task=task, token=f"{task}-{src}")

    def run(self, src: str, t: float, task: str) -> Log:
        """Claimed task ``task`` runs in ``src`` from ``t`` and completes at ``t + 1``."""
        self.handler("handler_start", src, t, task)
        self.handler("handler_end", src, t + 1, task)
        return self.finish(src, t + 1, task)

    def check(self, tasks: str = "", final: dict[str, str | None] | None = None, **kw: Any):
        expected = dict.fromkeys(tasks.split(), "completed")
        final = {**expected, **(final or {})}
        events = sorted(self.events, key=lambda e: (e["t"], e["src"], e["seq"]))
        return check(History(events=events), expected=expected, final=final, **{"faults": [], **kw})


def clean() -> Log:
    """Two workers, disjoint claims, every task completed once."""
    log = Log().claim("w0", 0, "a", "b", limit=5).claim("w1", 0.1, "c", limit=5)
    return log.run("w0", 0.2, "a").run("w0", 0.3, "b").run("w1", 0.4, "c")


def test_clean_history_passes_with_exact_evidence() -> None:
    verdict = clean().check("a b c")
    assert verdict.violations == []
    assert verdict.ok
    counters = ("claims", "max_claim_size", "workers_with_work", "completed", "handler_starts")
    assert {k: verdict.evidence[k] for k in counters} == dict(
        zip(counters, (2, 2, 2, 3, 3), strict=True)
    )
    assert verdict.evidence["reexecuted"] == 0


@pytest.mark.parametrize(
    ("status", "fragment"),
    [("running", "task 'b' ended 'running'"), (None, "task 'b' is missing")],
)
def test_task_not_completed_is_lost(status: str | None, fragment: str) -> None:
    verdict = clean().check("a b c", final={"b": status})
    assert len(verdict.violations) == 1
    assert fragment in verdict.violations[0]
    assert "(lost)" in verdict.violations[0]


def test_duplicate_completion() -> None:
    # w0's lease lapses at 1, w1 reclaims at 2 (no overlap), and both complete.
    log = Log().claim("w0", 0, "a", lease=1).claim("w1", 2, "a")
    verdict = log.finish("w1", 2.5, "a").finish("w0", 3, "a").check("a")
    assert verdict.violations == ["task 'a' was completed 2 times (duplicate completion)"]


@pytest.mark.parametrize(
    ("second_claim", "extra", "violation"),
    [
        pytest.param(5, None, True, id="reclaim-inside-lease"),
        pytest.param(10, None, False, id="reclaim-at-lease-end"),
        pytest.param(12, None, False, id="reclaim-after-lease"),
        pytest.param(12, ("renewed", 8), True, id="renewal-extends-lease"),
        pytest.param(5, ("released", 2), False, id="release-ends-ownership"),
        pytest.param(5, ("failed", 2), False, id="failure-ends-ownership"),
    ],
)
def test_overlapping_owners(second_claim: float, extra: Any, violation: bool) -> None:
    log = Log().claim("w0", 0, "a", lease=10)
    if extra and extra[0] == "renewed":
        log.add("renewed", "w0", extra[1], leases={"a": at(extra[1] + 10)})
    elif extra:
        log.finish("w0", extra[1], "a", kind=extra[0])
    verdict = log.claim("w1", second_claim, "a").finish("w1", 20, "a").check("a")
    if not violation:
        assert verdict.violations == []
        return
    [message] = verdict.violations
    assert "overlapping owners" in message
    assert f"w1 claimed it at {at(second_claim)}" in message
    assert f"w0 held a valid lease until {at(18 if extra else 10)}" in message


def test_renewal_of_an_earlier_token_counts_when_the_worker_claims_the_task_again() -> None:
    # w0 renews its first lease to 18; w1 claims at 12 (overlap); w0 later claims the task anew.
    log = Log().claim("w0", 0, "a").add("renewed", "w0", 8, leases={"a": at(18)})
    log.claim("w1", 12, "a").finish("w1", 13, "a", kind="failed")
    verdict = log.claim("w0", 30, "a", gen="-2").finish("w0", 31, "a", gen="-2").check("a")
    assert len(verdict.violations) == 1
    assert "until " + at(18) in verdict.violations[0]


def test_claim_larger_than_its_limit() -> None:
    verdict = Log().claim("w0", 0, "a", "b", "c", limit=2).check()
    assert verdict.violations == ["claim by w0 returned 3 tasks but asked for at most 2"]
    assert verdict.evidence["max_claim_size"] == 3


def test_reclaim_after_completion() -> None:
    log = Log().claim("w0", 0, "a").finish("w0", 1, "a").claim("w1", 2, "a")
    [message] = log.check("a").violations
    assert f"claimed again by w1 at {at(2)} after w0 completed it at {at(1)}" in message


@pytest.mark.parametrize("kind", ["handler_start", "completed"])
def test_task_run_but_never_scheduled(kind: str) -> None:
    verdict = Log().add(kind, "w0", 1, task="z", token="z-w0", at=at(1)).check("a")
    assert verdict.violations == ["task 'z' was run but never scheduled (unexpected)"]


@pytest.mark.parametrize("fired", [False, True])
def test_declared_fault_must_fire(fired: bool) -> None:
    log = Log()
    if fired:
        log.add("fault", "runner", 1, fault="kill-w0", action="kill", target="w0")
    verdict = log.check(faults=["kill-w0"])
    assert verdict.evidence["faults_fired"] == int(fired)
    if fired:
        assert verdict.violations == []
    else:
        assert verdict.violations == [
            "fault 'kill-w0' never fired, so the run tested nothing of it"
        ]


@pytest.mark.parametrize(
    ("action", "counter"), [("kill", "killed_in_flight"), ("stop", "paused_in_flight")]
)
def test_fault_counts_handlers_in_flight_and_reclaims_after_expiry(
    action: str, counter: str
) -> None:
    log = Log().claim("w0", 0, "a", "b", "c", "d", lease=5).claim("w1", 0, "e")
    for task in "abcd":
        log.handler("handler_start", "w0", 0.1, task)
    log.handler("handler_end", "w0", 0.5, "c")  # finished before the fault: not in flight
    log.handler("handler_cancelled", "w0", 0.6, "d")  # stopped before the fault
    log.handler("handler_start", "w1", 0.1, "e")  # in flight, but on another worker
    log.add("fault", "runner", 1, fault="f", action=action, target="w0")
    log.handler("handler_start", "w0", 1.5, "x")  # after the fault: not counted
    # a is re-claimed exactly at its lease end, b before it (an overlap, not a reclaim).
    verdict = log.claim("w1", 5, "a").claim("w1", 3, "b").check(faults=["f"])
    other = {"killed_in_flight": "paused_in_flight", "paused_in_flight": "killed_in_flight"}
    assert verdict.evidence[counter] == 2
    assert verdict.evidence[other[counter]] == 0
    assert verdict.evidence["reclaimed_after_expiry"] == 1
    assert any("task 'b'" in v and "overlapping owners" in v for v in verdict.violations)


def test_lease_loss_counters() -> None:
    log = Log()
    for operation in ("heartbeat", "complete", "release"):
        log.add("lease_lost", "w0", 1, task=operation, token="old", operation=operation)
    log.add("handler_cancelled", "w0", 2, task="heartbeat", token="old")
    log.add("handler_cancelled", "w0", 2, task="other", token="old")  # not a lost lease
    log.add("orphans_recovered", "w1", 3, tasks=["p", "q"])
    # A write the worker gave up on itself (no answer before its lease lapsed) was not fenced.
    log.add("lease_lost", "w0", 4, task="x", token="t", operation="fail", reason="local_expiry")
    evidence = log.check().evidence
    assert (evidence["lease_lost"], evidence["fenced_writes"]) == (4, 2)
    assert (evidence["handlers_stopped"], evidence["orphans_recovered"]) == (1, 2)


@pytest.mark.parametrize(
    ("bounds", "unmet"),
    [
        ({"expect_min": {"completed": 3, "workers_with_work": 2}}, []),
        ({"expect_max": {"handler_starts": 3, "reexecuted": 0}}, []),
        ({"expect_min": {"completed": 4}}, ["evidence completed = 3, expected >= 4"]),
        ({"expect_max": {"handler_starts": 2}}, ["evidence handler_starts = 3, expected <= 2"]),
        (
            {"expect_min": {"claims": 3}, "expect_max": {"max_claim_size": 1}},
            ["evidence claims = 2, expected >= 3", "evidence max_claim_size = 2, expected <= 1"],
        ),
    ],
)
def test_expected_evidence_bounds(bounds: dict[str, dict[str, int]], unmet: list[str]) -> None:
    verdict = clean().check("a b c", **bounds)
    assert verdict.violations == []
    assert [u.split(" (")[0] for u in verdict.unmet] == unmet
    assert verdict.ok == (not unmet)


def test_an_owner_that_died_mid_write_cannot_convict_its_successor() -> None:
    # w0 began its final write (it may have committed) and was killed before logging the result:
    # w1's claim inside w0's lease is then no proof of overlap.
    log = Log().claim("w0", 0, "a", lease=10)
    log.add("writing", "w0", 1, task="a", token="a-w0", operation="fail")
    verdict = log.claim("w1", 2, "a").finish("w1", 3, "a").check("a")
    assert verdict.violations == []
    # With the write's outcome logged (fenced here), the overlap is judged as before.
    log.add("lease_lost", "w0", 1.5, task="a", token="a-w0", operation="fail")
    assert any("overlapping owners" in v for v in log.check("a").violations)
