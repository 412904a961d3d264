"""Load ``module:attribute`` paths from the command line; errors say which part failed."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError


def load_object(path: str, *, what: str) -> Any:
    """Import ``module:attr`` (attr may be dotted). ``what`` names the option in errors."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what} {path!r} is not of the form module:attribute")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"{what} {path!r}: cannot import module {module_name!r} ({exc}); is it installed "
            "or on PYTHONPATH?"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{what} {path!r}: module {module_name!r} has no {attr!r}") from None
    return obj
