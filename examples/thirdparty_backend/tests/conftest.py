"""The backend under test, for the conformance suite imported in test_conformance.py."""

import pytest
import zart_example_backend


@pytest.fixture(scope="session")
def zart_backend() -> str:
    return str(zart_example_backend.descriptor_path())
