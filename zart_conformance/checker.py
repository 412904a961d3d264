"""Judge a recorded history after the run, in the style of Jepsen's checkers.

The history is the event log (handlers, worker lifecycle, runner and faults) plus the final
state read from the backend. Invariants are checked on every run; evidence counters prove that
the scenario's fault or contention really happened, so a run that tested nothing fails.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .eventlog import History

# Every counter a scenario may put a bound on, and what it counts.
COUNTERS: dict[str, str] = {
    "tasks": "tasks scheduled by the workload",
    "completed": "tasks whose final stored status is completed",
    "claims": "claims that returned at least one task",
    "max_claim_size": "most tasks returned by one claim",
    "workers_with_work": "worker processes that started at least one handler",
    "handler_starts": "handler invocations",
    "reexecuted": "tasks whose handler started more than once",
    "lease_lost": "times a worker learned it lost a lease",
    "fenced_writes": "complete/fail/release writes rejected for a stale token",
    "handlers_stopped": "handlers cancelled because their lease was lost",
    "released": "tasks given back to scheduled by a worker",
    "orphans_recovered": "expired leases returned to scheduled by a sweep",
    "killed_in_flight": "handlers running in a worker when it was killed",
    "paused_in_flight": "handlers running in a worker when it was paused (SIGSTOP)",
    "reclaimed_after_expiry": (
        "tasks of a killed/paused worker claimed again after its lease expired"
    ),
    "db_errors": "database errors a worker reported and retried",
    "faults_fired": "faults the runner injected",
    "terminated_in_flight": "handlers running in a worker when it got SIGTERM",
    "requeued_before_expiry": "released tasks claimed again before the releasing lease would end",
    "renewals": "lease renewals (heartbeats) of single tasks",
    "retries": "failed attempts rescheduled with a backoff",
    "retried_on_schedule": "rescheduled attempts claimed no earlier than their backoff allowed",
    "failed_final": "tasks whose final stored status is failed",
    "max_db_connections": "most TCP connections one worker process held to the database",
    "pool_overflow": "connections one worker held beyond its pool size (plus its listener)",
    "max_clock_skew_s": "largest wall-clock offset of a worker from the runner, in seconds",
    "partitioned_in_flight": "handlers running in a worker when its network was cut",
    "fault_db_errors": "database errors a network fault's target reported while it lasted",
    "max_db_call_ms": "slowest failed database call, in ms (a hang shows here)",
    "toxic_affected": "live connections a toxic hit (kit's toxiproxy server only)",
    "health_not_ready": "times a worker's /readyz turned not ready",
    "health_ready_again": "times a worker's /readyz turned ready after being not ready",
    "work_after_heal": "handlers a network fault's target started after the network healed",
    "ambiguous_writes": "complete/fail/release calls that failed inside a network fault window",
    "max_pickup_ms": "slowest pickup of a task scheduled mid-run (schedule to handler start), ms",
    "listener_lost": "times a worker's LISTEN connection dropped or stopped answering",
    "listener_resubscribed": "times a worker's listener subscribed again after a drop",
    "steps_replayed": "completed steps a later run returned from storage without running",
    "events_before_wait": "executions that got their event before they reached the wait",
    "cancelled_in_flight": "executions running a step when they were cancelled",
    "woke_after_suspend": "suspended executions claimed again at or after their wake time",
    "max_wake_lateness_ms": "latest claim after a wake time (database clock), ms",
}


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    evidence: dict[str, int] = field(default_factory=dict)
    unmet: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.unmet


@dataclass
class _Ownership:
    task: str
    token: str
    worker: str
    start: datetime
    lease_end: datetime
    finished: datetime | None = None
    outcome: str | None = None
    # A final write was attempted and its result never logged (the owner died): it may have
    # landed at any moment, so the span's end is unknown and it cannot convict a successor.
    uncertain: bool = False

    @property
    def end(self) -> datetime:
        return min(self.lease_end, self.finished) if self.finished else self.lease_end


# Database clocks round: a retry a microsecond early is the clock, not the worker.
_CLOCK_SLACK = timedelta(milliseconds=1)
# A step may log its start just after the cancel committed if it passed its check just before.
_SIGNAL_SLACK = 0.1


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def check(
    history: History,
    *,
    expected: dict[str, str],
    final: dict[str, str | None],
    faults: list[str],
    expect_min: dict[str, int] | None = None,
    expect_max: dict[str, int] | None = None,
    scale: float = 1.0,
) -> Verdict:
    """``expected`` maps each scheduled task to the status it must end in; ``faults`` lists the
    ids of the faults the scenario declares (each must have fired). Bounds on durations
    (counters ending in ``_ms``) are multiplied by ``scale``, the run's time multiplier."""
    verdict = Verdict()
    ev = Counter[str]({name: 0 for name in COUNTERS})
    v = verdict.violations

    # -- claims and ownership -----------------------------------------------------------
    owners: dict[tuple[str, str], _Ownership] = {}
    latest: dict[tuple[str, str], str] = {}  # (worker, task) -> token it holds
    # In log order: a renewal extends the token its worker held then, not a later one.
    for event in history.of("claimed", "renewed"):
        if event["kind"] == "renewed":
            for task, expiry in event["leases"].items():
                token = latest.get((event["src"], task))
                if token and (task, token) in owners:
                    own = owners[(task, token)]
                    own.lease_end = max(own.lease_end, _ts(expiry))
            continue
        size = len(event["tasks"])
        ev["claims"] += 1
        ev["max_claim_size"] = max(ev["max_claim_size"], size)
        if size > event["limit"]:
            v.append(
                f"claim by {event['src']} returned {size} tasks but asked for at most "
                f"{event['limit']}"
            )
        for item in event["tasks"]:
            key = (item["id"], item["token"])
            owners[key] = _Ownership(
                item["id"],
                item["token"],
                event["src"],
                _ts(item["claimed_at"]),
                _ts(item["lease_expires_at"]),
            )
            latest[(event["src"], item["id"])] = item["token"]
    completions: Counter[str] = Counter()
    terminal_failures: set[str] = set()
    # Every write that ends a run ends its ownership, whatever comes next.
    for event in history.of("completed", "failed", "released", "suspended", "cancelled"):
        own = owners.get((event["task"], event["token"]))
        if own is not None:
            own.finished = _ts(event["at"])
            own.outcome = event["kind"]
        if event["kind"] == "completed":
            completions[event["task"]] += 1
        if event["kind"] == "failed" and event.get("retry_in") is None:
            terminal_failures.add(event["task"])
        if event["kind"] == "released":
            ev["released"] += 1

    answered = {
        (e["task"], e["token"])
        for e in history.of(
            "completed", "failed", "released", "suspended", "cancelled", "lease_lost"
        )
    }
    for event in history.of("writing"):
        key = (event["task"], event["token"])
        if key in owners and key not in answered:
            owners[key].uncertain = True

    by_task: dict[str, list[_Ownership]] = defaultdict(list)
    for own in owners.values():
        by_task[own.task].append(own)
    for task, spans in by_task.items():
        spans.sort(key=lambda o: o.start)
        for index, after in enumerate(spans[1:], start=1):
            earlier = spans[:index]
            done = [
                o
                for o in earlier
                if o.outcome == "completed" and o.finished and o.finished <= after.start
            ]
            if done:
                v.append(
                    f"task {task!r} was claimed again by {after.worker} at "
                    f"{after.start.isoformat()} after {done[0].worker} completed it at "
                    f"{done[0].finished.isoformat() if done[0].finished else '?'}"
                )
                continue
            # Compare with the earlier owner whose lease reaches furthest.
            judged = [o for o in earlier if not o.uncertain]
            before = max(judged, key=lambda o: o.end) if judged else None
            if before is not None and after.start < before.end:
                v.append(
                    f"task {task!r}: {after.worker} claimed it at {after.start.isoformat()} "
                    f"while {before.worker} held a valid lease until {before.end.isoformat()} "
                    f"(overlapping owners; tokens {before.token[:8]} and {after.token[:8]})"
                )

    # -- outcomes ------------------------------------------------------------------------
    for task, count in sorted(completions.items()):
        if count > 1:
            v.append(f"task {task!r} was completed {count} times (duplicate completion)")
    for task in sorted(terminal_failures & set(completions)):
        v.append(f"task {task!r} ended both completed and failed")
    for task, status in sorted(expected.items()):
        got = final.get(task)
        if got != status:
            state = "is missing" if got is None else f"ended {got!r}"
            v.append(f"task {task!r} {state}, expected {status!r} (lost)")
    known = set(expected)
    seen = {e["task"] for e in history.of("handler_start", "completed")}
    for task in sorted(seen - known):
        v.append(f"task {task!r} was run but never scheduled (unexpected)")

    # -- evidence ------------------------------------------------------------------------
    starts = list(history.of("handler_start"))
    ev["tasks"] = len(expected)
    ev["completed"] = sum(1 for s in final.values() if s == "completed")
    ev["handler_starts"] = len(starts)
    ev["workers_with_work"] = len({e["src"] for e in starts})
    per_task = Counter(e["task"] for e in starts)
    ev["reexecuted"] = sum(1 for n in per_task.values() if n > 1)
    lost_events = list(history.of("lease_lost"))
    ev["lease_lost"] = len(lost_events)
    ev["fenced_writes"] = sum(
        1
        for e in lost_events
        if e.get("operation") in ("complete", "fail", "release")
        and e.get("reason") != "local_expiry"
    )
    lost_tokens = {(e["task"], e["token"]) for e in lost_events}
    ev["handlers_stopped"] = sum(
        1 for e in history.of("handler_cancelled") if (e["task"], e["token"]) in lost_tokens
    )
    ev["orphans_recovered"] = sum(len(e["tasks"]) for e in history.of("orphans_recovered"))
    ev["db_errors"] = sum(1 for _ in history.of("db_error"))

    fired = {e["fault"]: e for e in history.of("fault")}
    ev["faults_fired"] = len(fired)
    for fault in faults:
        if fault not in fired:
            v.append(f"fault {fault!r} never fired, so the run tested nothing of it")
    for event in fired.values():
        counter = {
            "kill": "killed_in_flight",
            "stop": "paused_in_flight",
            "term": "terminated_in_flight",
            "partition": "partitioned_in_flight",
        }.get(event["action"])
        if counter is None:
            continue
        held = _in_flight(history, event["target"], event["t"])
        ev[counter] += len(held)
        for task, token in held:
            own = owners.get((task, token))
            if own is None:
                continue
            later = [o for o in by_task[task] if o.token != token and o.start >= own.start]
            if event["action"] != "term" and any(o.start >= own.lease_end for o in later):
                ev["reclaimed_after_expiry"] += 1

    _requeue_and_retries(history, by_task, ev, v)
    _resources(history, ev)
    _network(history, ev)
    _steps(history, ev, v)
    _signals(history, ev, v)
    _wakes(history, by_task, ev, v)
    ev["failed_final"] = sum(1 for s in final.values() if s == "failed")
    verdict.evidence = dict(ev)
    for name, bound in (expect_min or {}).items():
        if ev[name] < bound:
            verdict.unmet.append(
                f"evidence {name} = {ev[name]}, expected >= {bound} ({COUNTERS[name]})"
            )
    for name, bound in (expect_max or {}).items():
        if name.endswith("_ms"):
            bound = int(bound * scale)
        if ev[name] > bound:
            verdict.unmet.append(
                f"evidence {name} = {ev[name]}, expected <= {bound} ({COUNTERS[name]})"
            )
    return verdict


def _in_flight(history: History, worker: str, until: float) -> list[tuple[str, str]]:
    """(task, token) pairs whose handler had started and not ended in ``worker`` at ``until``."""
    running: dict[tuple[str, str], Any] = {}
    for event in history.events:
        if event["t"] > until or event["src"] != worker:
            continue
        key = (event.get("task"), event.get("token"))
        if event["kind"] == "handler_start":
            running[key] = event
        elif event["kind"] in ("handler_end", "handler_cancelled", "handler_error"):
            running.pop(key, None)
    return [(str(task), str(token)) for task, token in running]


def _requeue_and_retries(
    history: History, by_task: dict[str, list[_Ownership]], ev: Counter[str], v: list[str]
) -> None:
    """A release hands a task on at once; a failed attempt waits its backoff, not less."""
    for event in history.of("released", "failed"):
        spans = by_task.get(event["task"], [])
        mine = next((o for o in spans if o.token == event["token"]), None)
        if mine is None:
            continue
        later = [o for o in spans if o.start > mine.start]
        if not later:
            continue
        following = min(later, key=lambda o: o.start)
        if event["kind"] == "released":
            if following.start < mine.lease_end:
                ev["requeued_before_expiry"] += 1
            continue
        retry_in = event.get("retry_in")
        if retry_in is None:
            continue
        ev["retries"] += 1
        earliest = _ts(event["at"]) + timedelta(seconds=retry_in)
        if following.start + _CLOCK_SLACK >= earliest:
            ev["retried_on_schedule"] += 1
        else:
            v.append(
                f"task {event['task']!r} was retried at {following.start.isoformat()}, before "
                f"its backoff of {retry_in:.3f}s from {event['at']} allowed"
            )
    ev["renewals"] = sum(len(e["leases"]) for e in history.of("renewed"))


def _resources(history: History, ev: Counter[str]) -> None:
    """Connections held per worker (sampled by the runner) and worker clock offsets."""
    started = next(history.of("run_started"), None)
    pool = started.get("pool_max") if started else None
    listeners = {e["src"] for e in history.of("listening")}
    for event in history.of("connections"):
        ev["max_db_connections"] = max(ev["max_db_connections"], event["count"])
        if pool is not None:
            allowed = pool + (1 if event["target"] in listeners else 0)
            ev["pool_overflow"] = max(ev["pool_overflow"], event["count"] - allowed)
    if started is not None:
        reference = started["wall"] - started["t"]
        for event in history.of("worker_started"):
            skew = abs((event["wall"] - event["t"]) - reference)
            ev["max_clock_skew_s"] = max(ev["max_clock_skew_s"], int(skew))


_CUTS = ("partition", "down", "reset", "latency", "slow_close", "bandwidth")


def _network(history: History, ev: Counter[str]) -> None:
    """What a network fault did to its target: errors while it lasted, health, recovery."""
    windows: dict[str, list[list[float]]] = defaultdict(list)  # target -> [start, end]
    for event in history.of("fault"):
        if event["action"] in _CUTS:
            windows[event["target"]].append([event["t"], float("inf")])
        elif event["action"] in ("heal", "up") and windows[event["target"]]:
            windows[event["target"]][-1][1] = event["t"]
    healed = {
        t: spans[-1][1] for t, spans in windows.items() if spans and spans[-1][1] < float("inf")
    }
    for event in history.events:
        kind, src = event["kind"], event["src"]
        if kind == "db_error":
            ev["max_db_call_ms"] = max(ev["max_db_call_ms"], int(event["elapsed"] * 1000))
            if any(a <= event["t"] <= b for a, b in windows.get(src, [])):
                ev["fault_db_errors"] += 1
                if event["operation"] in ("complete", "fail", "release"):
                    ev["ambiguous_writes"] += 1
        elif kind == "handler_start" and src in healed and event["t"] > healed[src]:
            ev["work_after_heal"] += 1
        elif kind == "toxic_affected":
            ev["toxic_affected"] = max(ev["toxic_affected"], event["count"])
    for fault in history.of("fault"):
        if fault["action"] != "schedule":
            continue
        prefix = f"{fault['params']['group']}-"
        firsts: dict[str, float] = {}
        for event in history.of("handler_start"):
            if event["task"].startswith(prefix) and event["t"] >= fault["t"]:
                firsts.setdefault(event["task"], event["t"])
        for started in firsts.values():
            ev["max_pickup_ms"] = max(ev["max_pickup_ms"], int((started - fault["t"]) * 1000))
    lost_listener: set[str] = set()
    for event in history.of("listen_lost", "listening"):
        if event["kind"] == "listen_lost":
            ev["listener_lost"] += 1
            lost_listener.add(event["src"])
        elif event["src"] in lost_listener:
            ev["listener_resubscribed"] += 1
            lost_listener.discard(event["src"])
    seen_unready: set[str] = set()
    for event in history.of("health"):
        if not event["ready"]:
            ev["health_not_ready"] += 1
            seen_unready.add(event["target"])
        elif event["target"] in seen_unready:
            ev["health_ready_again"] += 1


def _steps(history: History, ev: Counter[str], v: list[str]) -> None:
    """A step that completed (persisted) must never run again; replays return it."""
    done: set[tuple[str, int]] = set()
    started: set[tuple[str, str, int]] = set()
    for event in history.of("step_start", "step_done"):
        key = (event["task"], event["step"])
        if event["kind"] == "step_start":
            started.add((event["task"], event["token"], event["step"]))
            if key in done:
                v.append(f"task {key[0]!r}: step {key[1]} ran again after it completed")
            continue
        if (event["task"], event["token"], event["step"]) not in started:
            ev["steps_replayed"] += 1
        done.add(key)


def _group_faults(history: History, action: str) -> list[dict[str, Any]]:
    return [f for f in history.of("fault") if f["action"] == action]


def _signals(history: History, ev: Counter[str], v: list[str]) -> None:
    """Events delivered before the wait; cancellations that stop what runs and start nothing."""
    for fault in _group_faults(history, "event"):
        prefix = f"{fault['params']['group']}-"
        waits = {e["task"]: e["t"] for e in reversed(list(history.of("wait_begin")))}
        ev["events_before_wait"] += sum(
            1 for task, t in waits.items() if task.startswith(prefix) and t > fault["t"]
        )
    for fault in _group_faults(history, "cancel"):
        prefix = f"{fault['params']['group']}-"
        running: set[str] = set()
        for event in history.of("step_start", "step_end"):
            if event["task"].startswith(prefix) and event["t"] <= fault["t"]:
                (running.add if event["kind"] == "step_start" else running.discard)(event["task"])
        ev["cancelled_in_flight"] += len(running)
        for event in history.of("step_start"):
            if event["task"].startswith(prefix) and event["t"] > fault["t"] + _SIGNAL_SLACK:
                v.append(
                    f"task {event['task']!r}: step {event['step']} started after it was cancelled"
                )


def _wakes(
    history: History, by_task: dict[str, list[_Ownership]], ev: Counter[str], v: list[str]
) -> None:
    """A suspended execution is claimed again no earlier than its wake time, and how late."""
    for event in history.of("suspended"):
        if not event.get("until"):
            continue
        until = _ts(event["until"])
        mine = next((o for o in by_task.get(event["task"], []) if o.token == event["token"]), None)
        later = [o for o in by_task.get(event["task"], []) if mine and o.start > mine.start]
        if not later:
            continue
        claim = min(later, key=lambda o: o.start).start
        if claim + _CLOCK_SLACK < until and event.get("waiting_for") is None:
            v.append(
                f"task {event['task']!r} was claimed at {claim.isoformat()}, before its wake time {event['until']}"
            )
            continue
        ev["woke_after_suspend"] += 1
        lateness = int((claim - until).total_seconds() * 1000)
        ev["max_wake_lateness_ms"] = max(ev["max_wake_lateness_ms"], lateness)
