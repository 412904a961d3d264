"""JSON payloads that round-trip exactly on every backend, or a clear error at schedule time."""

from __future__ import annotations

import json
import math
from datetime import date, datetime
from typing import Any

from .errors import PayloadError

JSON = Any


def _where(path: list[str | int], root: str) -> str:
    return root + "".join(f"[{p!r}]" for p in path)


def _check(value: Any, path: list[str | int], root: str) -> None:
    """Reject what JSON or a database would silently change; the error names the exact path."""
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise PayloadError(
                f"{_where(path, root)} is {value!r}; JSON has no NaN or Infinity, "
                "so it would not round-trip. Use null or a string."
            )
        return
    if isinstance(value, str):
        if "\x00" in value:
            raise PayloadError(
                f"{_where(path, root)} contains a NUL character (\\x00) at index "
                f"{value.index(chr(0))}; not every database can store it (PostgreSQL cannot)."
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PayloadError(
                f"{_where(path, root)} contains a lone surrogate at index {exc.start}; "
                "it is not valid UTF-8 and no database stores it."
            ) from None
        return
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise PayloadError(
                f"{_where(path, root)} is a naive datetime ({value.isoformat()}); "
                "give it a timezone (e.g. datetime.now(timezone.utc)) so every worker reads "
                "the same instant."
            )
        raise PayloadError(
            f"{_where(path, root)} is a datetime; JSON has no datetime type. "
            "Store value.isoformat() instead."
        )
    if isinstance(value, date):
        raise PayloadError(
            f"{_where(path, root)} is a date; JSON has no date type. Store value.isoformat()."
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PayloadError(
                    f"{_where(path, root)} has key {key!r} of type {type(key).__name__}; "
                    "JSON object keys must be strings."
                )
            _check(key, [*path, key], root)
            _check(item, [*path, key], root)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(item, [*path, index], root)
        return
    raise PayloadError(
        f"{_where(path, root)} is a {type(value).__name__}, which is not JSON "
        "(expected dict, list, str, int, float, bool or None)."
    )


def encode(value: JSON, *, what: str = "payload") -> str:
    """Serialize ``value`` for storage after checking that it round-trips exactly."""
    if value is None:
        return "null"  # most results: no walk, no encoder on the hot path
    try:
        _check(value, [], what)
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except RecursionError:
        raise PayloadError(f"{what} is nested too deeply to store") from None


MAX_NAME = 255


def check_name(value: object, *, what: str) -> str:
    """Ids and handler names: what every backend stores and compares exactly."""
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_NAME:
        raise PayloadError(f"{what} is {len(value)} characters long; at most {MAX_NAME} fit")
    if value != value.strip():
        raise PayloadError(
            f"{what} {value!r} has leading or trailing white space, which MySQL ignores "
            "in comparisons; remove it"
        )
    _check(value, [], what)
    return value


def _reject_constant(name: str) -> Any:
    raise PayloadError(f"stored JSON contains {name}, which is not valid JSON")


def decode(text: str | None) -> JSON:
    """Parse stored JSON; integers stay exact Python ints whatever their size."""
    if text is None or text == "null":
        return None
    return json.loads(text, parse_constant=_reject_constant)


def parse_json_argument(text: str, *, what: str) -> JSON:
    """Parse user-supplied JSON text (CLI --data), with the position of any error."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    _check(value, [], what)
    return value
