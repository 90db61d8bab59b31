"""Extraction reads exactly the run's window from the warehouse and writes the same bytes on a rerun."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from pmg_tasks.extract import extract_clickstream
from pmg_tasks.layout import run_key
from pmg_tasks.store import open_store, read_frame
from pmg_tasks.warehouse import connect, events_schema


def test_reads_the_window_only(seeded_settings, run_date):
    settings = seeded_settings.model_copy(update={"lookback_days": 2})
    result = extract_clickstream(settings, run_date, chunk_rows=100)
    events = read_frame(open_store(settings), run_key(run_date, "events.parquet"))
    start, end = pd.Timestamp("2026-11-19"), pd.Timestamp("2026-11-21")
    assert result["events"] == len(events) > 0
    assert events["event_ts"].between(start, end, inclusive="left").all()
    with connect(settings) as warehouse:
        expected = warehouse.fetch_frame(
            "SELECT count(*) AS n FROM events WHERE event_ts >= :a AND event_ts < :b",
            {"a": start.to_pydatetime(), "b": end.to_pydatetime()},
        )["n"].iloc[0]
    assert len(events) == expected
    assert read_frame(open_store(settings), run_key(run_date, "items.parquet"))["item_id"].is_unique


def test_schema_is_declared_whatever_the_engine_returns(seeded_settings, run_date):
    import pyarrow.parquet as pq

    extract_clickstream(seeded_settings, run_date)
    with open_store(seeded_settings).reading(run_key(run_date, "events.parquet")) as path:
        assert pq.read_schema(path).remove_metadata() == events_schema()


def test_rerun_writes_identical_bytes(seeded_settings, run_date):
    store = open_store(seeded_settings)
    extract_clickstream(seeded_settings, run_date)
    first = store.get_bytes(run_key(run_date, "events.parquet"))
    extract_clickstream(seeded_settings, run_date)
    assert store.get_bytes(run_key(run_date, "events.parquet")) == first


def test_empty_window_writes_an_empty_file_not_an_error(seeded_settings):
    result = extract_clickstream(seeded_settings, "2020-01-01")
    assert result["events"] == 0
    assert read_frame(open_store(seeded_settings), run_key("2020-01-01", "events.parquet")).empty


def test_sql_values_are_bound_not_formatted(settings):
    """A hostile value in a parameter stays a value."""
    with connect(settings) as warehouse:
        warehouse.apply_ddl()
        hostile = "x'); DROP TABLE events; --"
        rows = warehouse.fetch_frame("SELECT count(*) AS n FROM events WHERE user_id = :u", {"u": hostile})
        assert rows["n"].iloc[0] == 0
        assert warehouse.fetch_frame("SELECT count(*) AS n FROM events")["n"].iloc[0] == 0


@pytest.mark.parametrize("bad", ["2026-13-01", "yesterday", "2026/11/20"])
def test_malformed_dates_are_rejected(seeded_settings, bad):
    with pytest.raises(ValueError):
        extract_clickstream(seeded_settings, bad)


def test_window_boundaries_are_half_open(settings):
    with connect(settings) as warehouse:
        warehouse.apply_ddl()
        edge = pd.DataFrame(
            {
                "event_id": ["before", "first", "last", "after"],
                "user_id": "u1", "item_id": "m1", "session_id": "s1", "event_type": "view",
                "event_ts": [dt.datetime(2026, 11, 19, 23, 59, 59, 999999), dt.datetime(2026, 11, 20),
                             dt.datetime(2026, 11, 20, 23, 59, 59, 999999), dt.datetime(2026, 11, 21)],
                "dwell_seconds": 1.0,
            }
        )
        warehouse.insert_frame("events", edge)
    extract_clickstream(settings.model_copy(update={"lookback_days": 1}), "2026-11-20")
    events = read_frame(open_store(settings), run_key("2026-11-20", "events.parquet"))
    assert events["event_id"].tolist() == ["first", "last"]


def test_catalog_is_validated_and_reported_at_extraction(seeded_settings, run_date):
    from pmg_tasks.store import read_json, read_table

    result = extract_clickstream(seeded_settings, run_date)
    store = open_store(seeded_settings)
    assert (result["items"], result["items_extracted"], result["items_quarantined"]) == (40, 40, 0)
    assert read_table(store, result["items_quarantine_key"]).num_rows == 0
    report = read_json(store, result["items_report_key"])
    assert (report["extracted"], report["valid"], report["quarantined"]) == (40, 40, 0)
    assert set(report["by_rule"]) >= {"duplicate_item_id", "title_missing", "attributes_not_json"}
