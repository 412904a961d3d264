"""The conformance suite as a test module: ``from zart_conformance.suite import *``.

The importing project's conftest provides the backend as a ``zart_backend`` session fixture
(a Descriptor or a descriptor path), or the command line does with ``--zart-backend``. The
plugin generates one test per scenario, marked ``zart`` and ``zart_<family>``.
"""

from __future__ import annotations

import pytest

from .pytest_plugin import run_scenario_test
from .scenario import Scenario
from .suite_runner import Suite

__all__ = ["test_zart_scenario"]


def test_zart_scenario(
    zart_suite: Suite, zart_scenario: Scenario, request: pytest.FixtureRequest
) -> None:
    run_scenario_test(zart_suite, zart_scenario, request.node)
