"""Backend descriptors: how to import a backend, where its server comes from, what it supports."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .data import backends_dir
from .scenario import CAPABILITIES
from .schema import DataError, Table, load_toml

ISOLATIONS = {"schema", "database", "file"}


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

    def with_factory(self, factory: str) -> Descriptor:
        """The same database under another backend implementation (a mutant, a fork)."""
        return replace(self, factory=factory)


def load_descriptor(path: Path) -> Descriptor:
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
    descriptor = Descriptor(
        name=name,
        path=path,
        description=top.str("description", required=False, default=""),
        factory=top.str("backend"),
        dialect=dialect,
        isolation=isolation,
        url_env=url_env,
        container_image=image,
        capabilities=frozenset(declared),
    )
    top.done()
    return descriptor


def resolve_descriptor(name_or_path: str) -> Descriptor:
    """A shipped backend by name (``postgres``) or a descriptor file path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return load_descriptor(path)
    candidate = backends_dir() / f"{name_or_path}.toml"
    if not candidate.exists():
        known = sorted(p.stem for p in backends_dir().glob("*.toml"))
        raise DataError(f"no backend named {name_or_path!r}; shipped backends: {known}")
    return load_descriptor(candidate)
