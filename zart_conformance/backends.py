"""Backend descriptors: how to import a backend, where its server comes from, what it supports.

A descriptor is a TOML file (``backends/*.toml`` ship with the kit); a third party points the
kit at its own file, at a ``module:attr`` naming one, or registers it under the entry-point
group ``zart_conformance.backends``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from zart_ref.errors import ConfigError
from zart_ref.importing import load_object

from .data import backends_dir
from .scenario import CAPABILITIES
from .schema import DataError, Table, load_toml

ISOLATIONS = {"schema", "database", "file"}
ENTRY_POINT_GROUP = "zart_conformance.backends"
REFERENCE_FACTORY = "zart_ref.sql:SQLBackend"


@dataclass(frozen=True)
class Descriptor:
    name: str
    path: Path
    description: str
    factory: str
    dialect: str
    isolation: str
    url_env: str | None
    container_image: str | None
    capabilities: frozenset[str]
    # Scenario id -> why this backend is known to fail it (a reason, an issue link).
    expected_failures: dict[str, str] = field(default_factory=dict)
    # How the user named it, so a replay command names it the same way.
    ref: str = ""

    def with_factory(self, factory: str) -> Descriptor:
        """The same database under another backend implementation (a mutant, a fork)."""
        return replace(self, factory=factory)


def load_descriptor(path: Path, *, ref: str | None = None) -> Descriptor:
    top = Table(load_toml(path), file=path)
    name = top.str("name")
    dialect = top.str("dialect")
    if dialect not in ("postgresql", "mysql", "sqlite"):
        raise top.error("dialect", f"expected postgresql, mysql or sqlite, got {dialect!r}")
    isolation = top.str("isolation")
    if isolation not in ISOLATIONS:
        raise top.error("isolation", f"expected one of {sorted(ISOLATIONS)}, got {isolation!r}")
    fitting = {"sqlite": "file", "postgresql": "schema", "mysql": "database"}[dialect]
    if isolation != fitting:
        raise top.error(
            "isolation", f"{dialect} runs are isolated by {fitting!r}, not {isolation!r}"
        )
    provision = top.table("provision")
    url_env = provision.str("url_env", required=dialect != "sqlite")
    image = provision.str("container_image", required=False)
    provision.done()
    caps = top.table("capabilities")
    declared = set()
    for cap in caps.data:
        if cap not in CAPABILITIES:
            raise caps.error(cap, f"unknown capability; expected one of {sorted(CAPABILITIES)}")
        if caps.bool(cap):
            declared.add(cap)
    ledger = top.table("expected_failures")
    expected = {scenario: ledger.str(scenario) for scenario in ledger.data}
    descriptor = Descriptor(
        name=name,
        path=path,
        description=top.str("description", required=False, default=""),
        # Without ``backend``: DSN-only, a database speaking a dialect the reference supports.
        factory=top.str("backend", required=False, default=REFERENCE_FACTORY),
        dialect=dialect,
        isolation=isolation,
        url_env=url_env,
        container_image=image,
        capabilities=frozenset(declared),
        expected_failures=expected,
        # A path is kept absolute: a replay command must work from any directory.
        ref=ref if ref is not None else str(path.resolve()),
    )
    top.done()
    return descriptor


def _from_object(obj: Any, where: str, ref: str) -> Descriptor:
    """An entry point or ``module:attr`` may give a Descriptor, a path, or a callable of one."""
    if callable(obj) and not isinstance(obj, Descriptor):
        obj = obj()
    if isinstance(obj, Descriptor):
        return replace(obj, ref=ref)
    if isinstance(obj, str | Path):
        return load_descriptor(Path(obj), ref=ref)
    raise DataError(f"{where} gave {obj!r}; expected a Descriptor or a descriptor file path")


def registered() -> dict[str, Any]:
    """Backends other packages registered under the ``zart_conformance.backends`` group."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def resolve_descriptor(name_or_path: str) -> Descriptor:
    """A descriptor file, a ``module:attr``, a registered entry point, or a shipped name."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return load_descriptor(path)
    if ":" in name_or_path:
        try:
            obj = load_object(name_or_path, what="backend descriptor")
        except ConfigError as exc:
            raise DataError(str(exc)) from None
        return _from_object(obj, name_or_path, name_or_path)
    plugins = registered()
    if name_or_path in plugins:
        where = f"entry point {name_or_path!r} ({plugins[name_or_path].value})"
        return _from_object(plugins[name_or_path].load(), where, name_or_path)
    candidate = backends_dir() / f"{name_or_path}.toml"
    if not candidate.exists():
        known = sorted(p.stem for p in backends_dir().glob("*.toml")) + sorted(plugins)
        raise DataError(
            f"no backend named {name_or_path!r}; known: {known}. Give a descriptor .toml path, "
            f"a module:attr, or register one under the {ENTRY_POINT_GROUP!r} entry-point group"
        )
    return load_descriptor(candidate, ref=name_or_path)
