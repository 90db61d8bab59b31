"""Fixtures of the demo tests: a real PostgreSQL (skipped when absent)."""

from tests.warehouse.pg_fixtures import postgres_server, postgres_url  # noqa: F401
