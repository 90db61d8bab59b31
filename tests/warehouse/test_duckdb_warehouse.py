"""The embedded DuckDB warehouse: extraction inside the engine, with or without a sort, gives the same bytes;
files have the declared schema whatever the table's types; Airflow connections become SQLAlchemy URLs."""

from __future__ import annotations

import datetime as dt
import logging
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from pmg_tasks.extract import extract_clickstream, without_order_by
from pmg_tasks.layout import run_key
from pmg_tasks.settings import Settings
from pmg_tasks.store import open_store
from pmg_tasks.warehouse import connect, connection_url, events_schema, load_sql

DS = "2026-11-20"


def test_stored_order_and_sorted_extraction_write_the_same_bytes(seeded_settings, caplog):
    store = open_store(seeded_settings)
    key = run_key(DS, "events.parquet")
    with caplog.at_level(logging.INFO, logger="pmg_tasks.extract"):
        extract_clickstream(seeded_settings, DS)
    assert "without a sort" in caplog.text  # the seeded shop is appended in time order
    in_order = store.get_bytes(key)

    with connect(seeded_settings) as warehouse:  # the same rows, stored in another order
        warehouse.execute("CREATE TABLE shuffled AS SELECT * FROM events ORDER BY hash(event_id, session_id)")
        warehouse.execute("DELETE FROM events")
        warehouse.execute("INSERT INTO events SELECT * FROM shuffled")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pmg_tasks.extract"):
        extract_clickstream(seeded_settings, DS)
    assert "without a sort" not in caplog.text
    assert store.get_bytes(key) == in_order


def test_files_have_the_declared_nullable_schema_whatever_the_table_types(tmp_path):
    settings = Settings(home=tmp_path, lookback_days=1)
    with connect(settings) as warehouse:
        warehouse.execute(
            "CREATE TABLE events (event_id INTEGER, user_id VARCHAR, item_id VARCHAR, session_id VARCHAR, "
            "event_type VARCHAR, event_ts TIMESTAMPTZ, dwell_seconds DECIMAL(8, 2))"
        )
        warehouse.execute(
            "INSERT INTO events VALUES (1, 'u1', 'm1', 's1', 'view', TIMESTAMPTZ '2026-11-20 10:00:00+02', 1.25)"
        )
        warehouse.apply_ddl()
    extract_clickstream(settings, DS)
    with open_store(settings).reading(run_key(DS, "events.parquet")) as path:
        table = pq.read_table(path)
    # Every column nullable although this file has no null: the schema does not depend on the rows.
    assert table.schema.remove_metadata() == events_schema()
    assert table.to_pylist() == [
        {
            "event_id": "1",
            "user_id": "u1",
            "item_id": "m1",
            "session_id": "s1",
            "event_type": "view",
            "event_ts": dt.datetime(2026, 11, 20, 8, 0),
            "dwell_seconds": 1.25,
        }
    ]


def test_order_by_is_stripped_only_at_the_end():
    sql = load_sql("extract_events.sql")
    assert "ORDER BY" in sql and "ORDER BY" not in without_order_by(sql)
    assert without_order_by("SELECT 1 FROM t ORDER BY a;\n") == "SELECT 1 FROM t"
    with pytest.raises(ValueError):
        without_order_by("SELECT 1 FROM t")


def _connection(**fields):
    base = {
        "conn_id": "wh",
        "conn_type": "postgres",
        "host": None,
        "port": None,
        "login": None,
        "password": None,
        "schema": None,
        "extra_dejson": {},
    }
    return SimpleNamespace(**{**base, **fields})


def test_airflow_connection_fields_become_a_sqlalchemy_url():
    url = connection_url(
        _connection(
            host="db.internal",
            port=5433,
            login="pmg",
            password="p@ss:word",
            schema="shop",
            extra_dejson={"sslmode": "require"},
        )
    )
    assert url == "postgresql+psycopg2://pmg:p%40ss%3Aword@db.internal:5433/shop?sslmode=require"
    assert (
        connection_url(_connection(conn_type="duckdb", host="/data/wh.duckdb")) == "duckdb:////data/wh.duckdb"
    )
    with pytest.raises(ValueError, match="type 'http'"):
        connection_url(_connection(conn_type="http"))
