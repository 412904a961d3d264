"""Where the scenarios and backend descriptors are: inside the wheel, or beside a checkout."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_HERE / "_data" / name, _HERE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the kit's {name}/ directory is missing (looked in {_HERE})")


def scenarios_dir() -> Path:
    return _find("scenarios")


def backends_dir() -> Path:
    return _find("backends")
