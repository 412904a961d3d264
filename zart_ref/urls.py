"""Database URLs in the forms users already have, mapped to the async driver.

A password in a URL is never printed: every message goes through ``redact``.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigError

# Every scheme a user may paste, and the async driver SQLAlchemy must use for it.
_ASYNC_DRIVERS = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mariadb": "mysql+aiomysql",
    "mysql+aiomysql": "mysql+aiomysql",
    "mysql+pymysql": "mysql+aiomysql",
    "mariadb+aiomysql": "mysql+aiomysql",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


def normalize_url(raw: str | URL) -> URL:
    """Parse ``raw`` and return it with its async driver.

    Raises ConfigError naming the (redacted) URL and the accepted schemes when it cannot be used.
    """
    if isinstance(raw, URL):
        url = raw
    else:
        text = raw.strip()
        if not text:
            raise ConfigError("database URL is empty; expected e.g. postgresql://user@host/db")
        try:
            url = make_url(text)
        except ArgumentError:
            raise ConfigError(
                f"database URL {redact(text)!r} is not a URL; expected scheme://... "
                f"with one of: {', '.join(sorted(_ASYNC_DRIVERS))}"
            ) from None
    driver = _ASYNC_DRIVERS.get(url.drivername)
    if driver is None:
        raise ConfigError(
            f"database URL {redact(url)!r} has unsupported scheme {url.drivername!r}; "
            f"expected one of: {', '.join(sorted(_ASYNC_DRIVERS))}"
        )
    url = url.set(drivername=driver)
    if driver == "postgresql+asyncpg" and "sslmode" in url.query:
        # libpq spells it sslmode; asyncpg takes the same values as ssl.
        query = dict(url.query)
        query["ssl"] = query.pop("sslmode")
        url = url.set(query=query)
    if driver.startswith("sqlite") and not url.database:
        raise ConfigError(
            f"SQLite URL {redact(url)!r} names no file; expected sqlite:///path/to/file.db "
            "(an in-memory database cannot be shared by a worker process)"
        )
    if not driver.startswith("sqlite") and not url.host:
        raise ConfigError(f"database URL {redact(url)!r} names no host")
    return url


def libpq_dsn(url: URL) -> str:
    """A PostgreSQL URL as asyncpg.connect() takes it: libpq's spelling, sslmode included (an
    ``ssl`` query key would be sent to the server as a setting, and refused)."""
    query = dict(url.query)
    if "ssl" in query:
        query["sslmode"] = query.pop("ssl")
    return url.set(drivername="postgresql", query=query).render_as_string(hide_password=False)


def redact(url: str | URL) -> str:
    """The URL as text with any password replaced by ***, safe for logs and errors."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        # Not parseable: hide everything between "://" and "@" rather than risk a leak.
        head, sep, tail = url.partition("://")
        if sep and "@" in tail:
            return f"{head}://***@{tail.rsplit('@', 1)[1]}"
        return url


def dialect_name(url: URL) -> str:
    """'postgresql', 'mysql' or 'sqlite'."""
    return url.get_backend_name()
