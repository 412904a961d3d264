import pytest

from zart_ref import ConfigError, normalize_url, redact
from zart_ref.urls import libpq_dsn


@pytest.mark.parametrize(
    ("raw", "driver"),
    [
        ("postgres://u@h/db", "postgresql+asyncpg"),
        ("postgresql://u@h/db", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg"),
        ("postgresql+psycopg2://u@h/db", "postgresql+asyncpg"),
        ("mysql://root@127.0.0.1:3306/test", "mysql+aiomysql"),
        ("mariadb://root@127.0.0.1/test", "mysql+aiomysql"),
        ("mysql+pymysql://root@h/test", "mysql+aiomysql"),
        ("sqlite:///tmp/zart.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:////abs/zart.db", "sqlite+aiosqlite"),
    ],
)
def test_user_url_forms_map_to_the_async_driver(raw: str, driver: str) -> None:
    assert normalize_url(raw).drivername == driver


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "empty"),
        ("not a url", "not a URL"),
        ("oracle://u@h/db", "unsupported scheme 'oracle'"),
        ("sqlite://", "names no file"),
        ("postgresql:///db", "names no host"),
    ],
)
def test_unusable_urls_say_why(raw: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        normalize_url(raw)


def test_password_never_appears_in_errors_or_redacted_text() -> None:
    with pytest.raises(ConfigError) as info:
        normalize_url("oracle://scott:tiger-secret@h/db")
    assert "tiger-secret" not in str(info.value)
    assert "tiger-secret" not in redact("postgresql://scott:tiger-secret@h:5432/db")
    assert "***" in redact("postgresql://scott:tiger-secret@h:5432/db")
    assert "tiger-secret" not in redact("weird://scott:tiger-secret@h:5432/db?x=%zz")


def test_libpq_sslmode_becomes_asyncpg_ssl() -> None:
    url = normalize_url("postgresql://u@h/db?sslmode=require")
    assert url.query == {"ssl": "require"}


def test_the_listener_dsn_spells_sslmode_as_libpq_does() -> None:
    url = normalize_url("postgresql://u:p@h:5433/db?sslmode=require&application_name=x")
    assert libpq_dsn(url) == "postgresql://u:p@h:5433/db?application_name=x&sslmode=require"
