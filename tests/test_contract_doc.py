"""docs/contract.md and the scenario files must agree on who checks what."""

from __future__ import annotations

import re
from pathlib import Path

from zart_conformance.data import scenarios_dir
from zart_conformance.scenario import load_all

CONTRACT = Path(__file__).resolve().parent.parent / "docs" / "contract.md"


def sections() -> dict[str, str]:
    text = CONTRACT.read_text()
    parts = re.split(r"^### (C\d+) .*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def checked_by(body: str) -> set[str]:
    match = re.search(r"^Checked by: (.*)$", body, flags=re.MULTILINE)
    assert match, "every clause says which scenarios check it"
    line = match.group(1)
    return set() if line.startswith("no scenario yet") else {s.strip() for s in line.split(",")}


def test_every_clause_a_scenario_names_exists_and_lists_it() -> None:
    clauses = sections()
    for scenario in load_all(scenarios_dir()):
        for clause in scenario.clauses:
            assert clause in clauses, f"{scenario.path} names {clause}, absent from contract.md"
            assert scenario.id in checked_by(clauses[clause]), (
                f"contract.md {clause} does not list {scenario.id}, which checks it"
            )


def test_every_scenario_the_contract_names_checks_that_clause() -> None:
    scenarios = {s.id: s for s in load_all(scenarios_dir())}
    for clause, body in sections().items():
        for scenario_id in checked_by(body):
            assert scenario_id in scenarios, f"contract.md {clause} names unknown {scenario_id}"
            assert clause in scenarios[scenario_id].clauses, (
                f"contract.md {clause} lists {scenario_id}, whose clauses do not include it"
            )
