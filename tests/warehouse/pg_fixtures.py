"""A real PostgreSQL for tests: a throwaway database on the server at PMG_TEST_POSTGRES_URL.

Default: postgresql://postgres@127.0.0.1:5432/postgres (trust auth). Each test gets its own database
pmg_test_<random>, created here and dropped at the end; tests skip, saying why, when no server answers
(a laptop without PostgreSQL).
"""

from __future__ import annotations

import os
import secrets

import pytest

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _server_url() -> str:
    return os.environ.get("PMG_TEST_POSTGRES_URL", DEFAULT_SERVER_URL)


def _admin_connection():
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(_server_url())
    conn = psycopg2.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        dbname=url.database or "postgres",
        connect_timeout=3,
    )
    conn.autocommit = True
    return conn, url


@pytest.fixture(scope="session")
def postgres_server():
    """The admin connection parameters, or a skip when no PostgreSQL answers."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed: run `make setup`")
    try:
        conn, url = _admin_connection()
    except Exception as error:  # psycopg2.OperationalError and friends
        pytest.skip(
            f"no PostgreSQL server answers at {_server_url()} ({str(error).strip().splitlines()[0]}); "
            "set PMG_TEST_POSTGRES_URL to run these tests"
        )
    conn.close()
    return url


@pytest.fixture
def postgres_url(postgres_server):
    """A SQLAlchemy URL of a fresh database, dropped after the test."""
    name = f"pmg_test_{secrets.token_hex(6)}"
    conn, url = _admin_connection()
    try:
        with conn.cursor() as cursor:
            # The name is ours (hex); identifiers cannot be bound.
            cursor.execute(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0")
        database_url = url.set(drivername="postgresql+psycopg2", database=name)
        yield database_url.render_as_string(hide_password=False)
    finally:
        with conn.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()
