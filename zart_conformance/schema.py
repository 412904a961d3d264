"""Reading TOML data with errors that name the file, the key and what was expected."""

from __future__ import annotations

import difflib
import math
import tomllib
from pathlib import Path
from typing import Any

from zart_ref.errors import ConfigError


class DataError(ConfigError):
    """A scenario or backend descriptor is malformed; the message says where and why."""


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{path}: not valid TOML: {exc}") from None


class Table:
    """A TOML table being validated: every read names its dotted key on failure."""

    def __init__(self, data: Any, *, file: Path | str, key: str = "") -> None:
        self.file = file
        self.key = key
        if not isinstance(data, dict):
            self.fail(key or "(top level)", "a table", data)
        self.data: dict[str, Any] = data
        self._read: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.key}.{key}" if self.key else key

    def fail(self, key: str, expected: str, got: Any) -> None:
        raise DataError(f"{self.file}: key {key!r}: expected {expected}, got {got!r}")

    def error(self, key: str, message: str) -> DataError:
        return DataError(f"{self.file}: key {self._name(key)!r}: {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        self._read.add(key)
        return self.data.get(key, default)

    def _get(self, key: str, required: bool, default: Any) -> Any:
        self._read.add(key)
        if key not in self.data:
            if required:
                near = difflib.get_close_matches(key, [str(k) for k in self.data], n=1)
                hint = f" (found {self._name(near[0])!r}: misspelled?)" if near else ""
                raise DataError(f"{self.file}: missing required key {self._name(key)!r}{hint}")
            return default
        return self.data[key]

    def str(self, key: str, *, required: bool = True, default: str | None = None) -> Any:
        value = self._get(key, required, default)
        # Only a value from the file is checked: a default such as "" is the caller's choice.
        if key in self.data and (not isinstance(value, str) or not value.strip()):
            self.fail(self._name(key), "a non-empty string", value)
        return value

    def int(
        self, key: str, *, required: bool = True, default: int | None = None, minimum: int = 0
    ) -> Any:
        value = self._get(key, required, default)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < minimum
        ):
            self.fail(self._name(key), f"an integer >= {minimum}", value)
        return value

    def number(
        self, key: str, *, required: bool = True, default: float | None = None, minimum: float = 0
    ) -> Any:
        value = self._get(key, required, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(self._name(key), f"a number >= {minimum}", value)
        if math.isnan(value) or math.isinf(value) or value < minimum:
            self.fail(self._name(key), f"a finite number >= {minimum}", value)
        return float(value)

    def bool(self, key: str, *, default: bool = False) -> bool:
        value = self._get(key, False, default)
        if not isinstance(value, bool):
            self.fail(self._name(key), "true or false", value)
        return value

    def strings(self, key: str, *, allowed: set[str] | None = None) -> list[str]:
        value = self._get(key, False, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(self._name(key), "a list of strings", value)
        if allowed is not None:
            for item in value:
                if item not in allowed:
                    raise self.error(
                        key, f"unknown value {item!r}; expected one of {sorted(allowed)}"
                    )
        return list(value)

    def table(self, key: str, *, required: bool = False) -> Table:
        value = self._get(key, required, {})
        return Table(value, file=self.file, key=self._name(key))

    def tables(self, key: str, *, required: bool = False) -> list[Table]:
        value = self._get(key, required, [])
        if not isinstance(value, list):
            self.fail(self._name(key), "an array of tables ([[...]])", value)
        return [
            Table(v, file=self.file, key=f"{self._name(key)}[{i}]") for i, v in enumerate(value)
        ]

    def counts(self, key: str, *, allowed: set[str]) -> dict[str, int]:
        table = self.table(key)
        result = {}
        for name in table.data:
            if name not in allowed:
                raise table.error(name, f"unknown counter; expected one of {sorted(allowed)}")
            result[name] = table.int(name)
        return result

    def done(self) -> None:
        """Reject keys nobody read: a typo must not silently disable a check."""
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            allowed = ", ".join(sorted(self._read)) or "none"
            raise DataError(
                f"{self.file}: unknown key(s) {', '.join(self._name(k) for k in unknown)!s}; "
                f"expected some of: {allowed}"
            )
