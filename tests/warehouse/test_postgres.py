"""PostgreSQL for real: the same shop in PostgreSQL and DuckDB extracts and validates to the same valid set,
an Airflow connection reaches it, and rows stream through a server-side cursor."""

from __future__ import annotations

import datetime as dt
import threading

import pyarrow as pa
import pytest

from pmg_tasks.demo.seed import make_shop, seed_warehouse
from pmg_tasks.extract import extract_clickstream
from pmg_tasks.layout import run_key
from pmg_tasks.settings import Settings
from pmg_tasks.store import open_store, read_frame, read_json
from pmg_tasks.validation import validate_events
from pmg_tasks.warehouse import Warehouse, connect, events_schema, load_sql, warehouse_url

pytestmark = pytest.mark.integration

DS = "2026-11-20"
NOW = dt.datetime(2026, 11, 21, 6, 0)


def _shop():
    # 3% broken rows (unknown items, negative dwell, duplicate ids): both engines must agree on them too.
    return make_shop(
        n_users=40, n_items=30, last_day=dt.date(2026, 11, 20), days=3, seed=5, bad_fraction=0.03
    )


def _run(settings: Settings) -> tuple[dict, dict]:
    extracted = extract_clickstream(settings, DS, chunk_rows=250)
    return extracted, validate_events(settings, DS, now=NOW)


def _rows(settings: Settings, name: str) -> list[tuple]:
    frame = read_frame(open_store(settings), run_key(DS, name))
    return sorted(
        frame.astype(object).where(frame.notna(), None).itertuples(index=False, name=None), key=repr
    )


def test_postgres_and_duckdb_give_the_same_valid_set(tmp_path, postgres_url):
    shop = _shop()
    common = {"lookback_days": 3, "max_bad_fraction": 1.0}
    on_duck = Settings(home=tmp_path / "duck", **common)
    on_pg = Settings(home=tmp_path / "pg", warehouse_url=postgres_url, **common)
    for settings in (on_duck, on_pg):
        with connect(settings) as warehouse:
            seed_warehouse(warehouse, shop)

    duck_extract, duck_valid = _run(on_duck)
    pg_extract, pg_valid = _run(on_pg)

    assert pg_extract["events"] == duck_extract["events"] > 0
    assert (pg_valid["valid"], pg_valid["quarantined"]) == (duck_valid["valid"], duck_valid["quarantined"])
    assert duck_valid["quarantined"] > 0
    assert _rows(on_pg, "events_valid.parquet") == _rows(on_duck, "events_valid.parquet")
    assert _rows(on_pg, "quarantine.parquet") == _rows(on_duck, "quarantine.parquet")
    assert _rows(on_pg, "items.parquet") == _rows(on_duck, "items.parquet")
    duck_report = read_json(open_store(on_duck), run_key(DS, "validation.json"))
    pg_report = read_json(open_store(on_pg), run_key(DS, "validation.json"))
    assert pg_report["by_rule"] == duck_report["by_rule"]
    # Conservation on both engines.
    for result in (duck_valid, pg_valid):
        assert result["extracted"] == result["valid"] + result["quarantined"]


def test_postgres_rerun_writes_identical_bytes(tmp_path, postgres_url):
    settings = Settings(home=tmp_path, warehouse_url=postgres_url, lookback_days=3, max_bad_fraction=1.0)
    with connect(settings) as warehouse:
        seed_warehouse(warehouse, _shop())
    store = open_store(settings)
    keys = [
        run_key(DS, n)
        for n in ("events.parquet", "items.parquet", "events_valid.parquet", "quarantine.parquet")
    ]
    _run(settings)
    first = {key: store.get_bytes(key) for key in keys}
    _run(settings)
    assert {key: store.get_bytes(key) for key in keys} == first


def test_airflow_connection_reaches_postgres(tmp_path, postgres_url, monkeypatch):
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    # What an operator sets in production: Airflow reads AIRFLOW_CONN_<ID> without a metadata database.
    monkeypatch.setenv(
        "AIRFLOW_CONN_PMG_TEST_WAREHOUSE", f"postgresql://{url.username}@{url.host}:{url.port}/{url.database}"
    )
    settings = Settings(home=tmp_path, warehouse_conn_id="pmg_test_warehouse", lookback_days=3)
    resolved = warehouse_url(settings)
    assert resolved.startswith("postgresql+psycopg2://") and resolved.endswith(f"/{url.database}")
    with connect(settings) as warehouse:
        assert warehouse.dialect == "postgresql"
        seed_warehouse(warehouse, make_shop(10, 8, dt.date(2026, 11, 20), 2, seed=1, bad_fraction=0.0))
    result = extract_clickstream(settings, DS)
    assert result["events"] > 0 and result["items"] == 8


def test_postgres_streams_typed_batches_through_a_server_side_cursor(postgres_url):
    with Warehouse(postgres_url) as warehouse:
        warehouse.apply_ddl()
        warehouse.execute(
            "INSERT INTO events SELECT 'e' || i, 'u' || (i % 7), 'm' || (i % 5), NULL, 'view', "
            "TIMESTAMP '2026-11-20' + i * INTERVAL '1 second', NULL FROM generate_series(1, 5000) AS i"
        )
        params = {"window_start": dt.datetime(2026, 11, 20), "window_end": dt.datetime(2026, 11, 21)}
        batches = warehouse.stream(
            load_sql("extract_events.sql"), params, chunk_rows=1000, schema=events_schema()
        )
        first = next(batches)
        # While the client holds one batch, the server runs the query as a cursor fetched in chunks.
        seen: list = []
        probe = threading.Thread(target=lambda: seen.extend(_server_queries(postgres_url)))
        probe.start()
        probe.join()
        rest = list(batches)

    assert any(q.startswith("FETCH FORWARD") for q in seen), seen
    assert first.num_rows == 1000 and [b.num_rows for b in rest] == [1000] * 4
    # Declared types even where every value is null: session_id and dwell_seconds.
    assert first.schema == events_schema()
    table = pa.Table.from_batches([first, *rest])
    assert (
        table.column("session_id").null_count == 5000 and table.column("dwell_seconds").type == pa.float64()
    )
    assert table.column("event_ts").to_pylist() == sorted(table.column("event_ts").to_pylist())


def _server_queries(url: str) -> list[str]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sqlalchemy.text(
                    "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                )
            )
            return [r[0] for r in rows]
    finally:
        engine.dispose()


def test_postgres_keeps_engine_types_out_of_the_files(tmp_path, postgres_url):
    """A warehouse with other column types (NUMERIC dwell, timestamptz) still yields the declared schema."""
    import pyarrow.parquet as pq

    with Warehouse(postgres_url) as warehouse:
        warehouse.execute(
            "CREATE TABLE events (event_id TEXT, user_id TEXT, item_id TEXT, session_id TEXT, event_type TEXT, "
            "event_ts TIMESTAMPTZ, dwell_seconds NUMERIC(10, 3))"
        )
        warehouse.execute(
            "INSERT INTO events VALUES ('e1', 'u1', 'm1', NULL, 'view', '2026-11-20 10:00:00+02', 1.5), "
            "('e2', 'u1', 'm1', NULL, 'click', '2026-11-20 23:30:00-02', NULL)"
        )
        warehouse.apply_ddl()
    settings = Settings(home=tmp_path, warehouse_url=postgres_url, lookback_days=1)
    assert extract_clickstream(settings, DS)["events"] == 1  # 23:30-02 is 01:30 UTC the next day
    with open_store(settings).reading(run_key(DS, "events.parquet")) as path:
        table = pq.read_table(path)
    assert table.schema.remove_metadata() == events_schema()
    assert table.to_pylist()[0]["event_ts"] == dt.datetime(2026, 11, 20, 8, 0)
    assert table.to_pylist()[0]["dwell_seconds"] == 1.5
