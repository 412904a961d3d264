"""docs/mutation-matrix.* is complete, current, and says what the kit's scenarios are worth.

The matrix is produced by ``nox -s mutation-matrix`` (all mutants x all scenarios, a real run
of half an hour); these tests hold the committed result to the code: a new mutant or scenario
without a regenerated matrix fails here, as does a mutant no scenario catches.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_conformance import MUTANTS as CAUGHT_IN_TESTS
from zart_conformance import mutants
from zart_conformance.data import scenarios_dir
from zart_conformance.matrix import CAUGHT, problems, render
from zart_conformance.scenario import load_all

DOCS = Path(__file__).resolve().parent.parent / "docs"
MATRIX = json.loads((DOCS / "mutation-matrix.json").read_text())
SCENARIOS = {s.id: s for s in load_all(scenarios_dir())}


def test_matrix_covers_every_mutant_and_every_scenario() -> None:
    assert set(MATRIX["cells"]) == set(mutants.MUTANTS)
    assert MATRIX["mutants"] == mutants.MUTANTS
    assert set(MATRIX["reference"]) == set(SCENARIOS)
    assert all(set(row) == set(SCENARIOS) for row in MATRIX["cells"].values())


def test_every_mutant_is_caught_and_every_idle_scenario_says_why() -> None:
    assert problems(MATRIX) == []


def test_the_files_hold_the_reasons_the_scenarios_give_now() -> None:
    # After editing a reason: zart-conformance mutation-matrix --rerender
    assert MATRIX["without_mutant"] == {i: s.without_mutant for i, s in SCENARIOS.items()}
    assert (DOCS / "mutation-matrix.md").read_text() == render(MATRIX)


def test_the_pairs_the_test_suite_checks_on_every_run_are_caught_in_the_matrix() -> None:
    for mutant, scenario, _ in CAUGHT_IN_TESTS:
        assert MATRIX["cells"][mutant][scenario] == CAUGHT, (mutant, scenario)
