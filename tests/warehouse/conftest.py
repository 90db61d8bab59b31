from tests.warehouse.pg_fixtures import postgres_server, postgres_url  # noqa: F401
