"""What differs per database, checked without a server where it is pure logic."""

from __future__ import annotations

import pytest

from zart_ref.dialects import skip_locked_problem


@pytest.mark.parametrize(
    ("version", "fragment"),
    [
        ("10.5.23-MariaDB-1:10.5.23+maria~deb11", "MariaDB 10.6 or newer"),
        ("10.3.39-MariaDB", "MariaDB 10.6 or newer"),
        ("5.7.44-log", "MySQL 8.0.1 or newer"),
        ("8.0.0-dmr", "MySQL 8.0.1 or newer"),
    ],
)
def test_servers_without_skip_locked_are_refused_with_the_reason(
    version: str, fragment: str
) -> None:
    problem = skip_locked_problem(version)
    assert problem is not None and fragment in problem and version in problem


@pytest.mark.parametrize(
    "version", ["10.6.0-MariaDB", "10.11.19-MariaDB-0+deb12u1", "11.4.2-MariaDB", "8.0.1", "8.4.3"]
)
def test_servers_with_skip_locked_are_accepted(version: str) -> None:
    assert skip_locked_problem(version) is None
