"""The expected-failure ledger: scenarios a backend is known to fail, each with its reason.

A known failure does not fail the run; a ledger entry that passes does, because a ledger that
is never pruned hides regressions behind old excuses. The updated ledger is printed to paste.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from .backends import Descriptor
from .runner import ScenarioResult
from .schema import DataError


def check_ledger(descriptor: Descriptor, known: Iterable[str]) -> None:
    """Every ledger entry must name a scenario: a typo would excuse nothing, silently."""
    known = set(known)
    for scenario in descriptor.expected_failures:
        if scenario not in known:
            raise DataError(
                f"{descriptor.path}: key 'expected_failures.{scenario}': no scenario {scenario!r}; "
                f"known: {sorted(known)}"
            )


def judge(result: ScenarioResult, descriptor: Descriptor) -> ScenarioResult:
    """The result with the ledger applied: failed -> expected_failure, passed -> unexpected_pass."""
    reason = descriptor.expected_failures.get(result.scenario)
    if reason is None:
        return result
    if result.outcome == "failed":
        return replace(result, outcome="expected_failure", reason=f"in the ledger: {reason}")
    if result.outcome == "passed":
        return replace(
            result,
            outcome="unexpected_pass",
            reason=f"passed, but the ledger expects it to fail ({reason}); remove the entry",
        )
    return result


def updated_ledger(ledger: Mapping[str, str], results: Sequence[ScenarioResult]) -> str:
    """The ``[expected_failures]`` table without the entries that passed, as TOML to paste."""
    passed = {r.scenario for r in results if r.outcome == "unexpected_pass"}
    lines = ["[expected_failures]"]
    for scenario, reason in ledger.items():
        if scenario not in passed:
            lines.append(f"{json.dumps(scenario)} = {json.dumps(reason)}")
    return "\n".join(lines)
