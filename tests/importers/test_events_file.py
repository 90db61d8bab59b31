"""The generic events importer: a column mapping, event type mapping, timestamps in any spelling, clear
errors, idempotent re-imports, and hostile values that stay values."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pmg_tasks.cli import main
from pmg_tasks.importers import ImportDataError, import_events_file, parse_mapping, parse_type_mapping
from pmg_tasks.warehouse import Warehouse

CSV = """\
id,uid,sku,action,time,dwell,extra
1,u1,m1,pageview,1763632800,1.5,x
2,u1,m2,buy,2026-11-20T10:00:00+02:00,abc,x
3,u2,m1,tap,garbage,,x
,u3,m3,pageview,1763632800,2,x
5,00042,m1,basket,2026-11-20 10:00:00,3,x
6,"x'); DROP TABLE events; --",m1,pageview,1763632800,1,x
"""
MAPPING = "event_id=id,user_id=uid,item_id=sku,event_type=action,event_ts=time,dwell_seconds=dwell"
TYPES = "view=pageview,purchase=buy,add_to_cart=basket"


@pytest.fixture
def warehouse(tmp_path):
    with Warehouse(f"duckdb:///{tmp_path / 'wh.duckdb'}") as wh:
        yield wh


def _events(warehouse) -> dict[str, tuple]:
    rows = warehouse.fetch_rows(
        "SELECT event_id, user_id, item_id, event_type, event_ts, dwell_seconds FROM events"
    )
    return {r[0]: r[1:] for r in rows}


def test_mapped_csv_is_imported_and_unusable_rows_are_counted(tmp_path, warehouse):
    path = tmp_path / "clicks.csv"
    path.write_text(CSV)

    result = import_events_file(warehouse, path, MAPPING, TYPES)

    assert result["rows"] == 6
    assert result["rejected"] == {"event_ts_unreadable": 1, "event_id_missing": 1}
    assert result["rejected_event_ts_examples"] == ["garbage"]
    assert result["dwell_unreadable_imported_as_null"] == 1
    assert result["events_inserted"] == 4 and result["users_added"] == 3
    events = _events(warehouse)
    assert events["1"] == ("u1", "m1", "view", dt.datetime(2025, 11, 20, 10, 0), 1.5)
    assert events["2"] == ("u1", "m2", "purchase", dt.datetime(2026, 11, 20, 8, 0), None)  # +02:00 -> UTC
    assert events["5"] == ("00042", "m1", "add_to_cart", dt.datetime(2026, 11, 20, 10, 0), 3.0)  # zeros kept
    assert events["6"][0] == "x'); DROP TABLE events; --"  # a value, not a statement

    again = import_events_file(warehouse, path, MAPPING, TYPES)
    assert (again["events_inserted"], again["events_already_present"], again["users_added"]) == (0, 4, 0)
    assert len(_events(warehouse)) == 4


def test_parquet_with_native_timestamps_and_derived_ids(tmp_path, warehouse):
    table = pa.table(
        {
            "user_id": ["u1", "u1", "u2"],
            "item_id": ["m1", "m1", "m2"],
            "event_type": ["view", "view", "click"],
            "ts_ms": pa.array([1763632800000, 1763632800000, 1763632801000], pa.int64()),
        }
    )
    path = tmp_path / "clicks.parquet"
    pq.write_table(table, path)

    result = import_events_file(warehouse, path, {"event_ts": "ts_ms"}, ts_unit="ms")
    assert result["events_inserted"] == 3
    events = _events(warehouse)
    # Identical lines get the same derived id: validation will see them as one event and a duplicate.
    assert len(set(events)) == 2 and all(e.startswith("ev-") for e in events)
    assert sorted(warehouse.fetch_rows("SELECT event_ts FROM events")) == [
        (dt.datetime(2025, 11, 20, 10, 0),),
        (dt.datetime(2025, 11, 20, 10, 0),),
        (dt.datetime(2025, 11, 20, 10, 0, 1),),
    ]
    assert import_events_file(warehouse, path, {"event_ts": "ts_ms"}, ts_unit="ms")["events_inserted"] == 0


def test_errors_name_what_is_missing(tmp_path, warehouse):
    path = tmp_path / "clicks.csv"
    path.write_text(CSV)
    with pytest.raises(
        ImportDataError,
        match=r"column 'userid' \(mapped to user_id\) is not in clicks.csv; its columns are: id, uid",
    ):
        import_events_file(warehouse, path, "user_id=userid")
    with pytest.raises(
        ImportDataError,
        match=r"no column for user_id, item_id, event_type, event_ts: map one with --map user_id=COLUMN",
    ):
        import_events_file(warehouse, path, "event_id=id")
    with pytest.raises(ImportDataError, match="not an events column"):
        parse_mapping("userid=uid")
    with pytest.raises(ImportDataError, match="not an event type"):
        parse_type_mapping("hover=mouseover")
    with pytest.raises(ImportDataError, match="is not TARGET=SOURCE"):
        parse_mapping("event_id")
    with pytest.raises(ImportDataError, match="no file"):
        import_events_file(warehouse, tmp_path / "absent.csv", MAPPING)


def test_cli_imports_into_the_settings_warehouse(tmp_path, monkeypatch, capsys):
    path = tmp_path / "clicks.csv"
    path.write_text(CSV)
    monkeypatch.setenv("PMG_HOME", str(tmp_path / "home"))

    assert main(["import", "events", str(path), "--map", MAPPING, "--types", TYPES]) == 0
    assert json.loads(capsys.readouterr().out)["events_inserted"] == 4
    assert main(["import", "events", str(path), "--map", "user_id=nope"]) == 2
    assert "column 'nope' (mapped to user_id)" in capsys.readouterr().err
    with Warehouse(f"duckdb:///{tmp_path / 'home' / 'warehouse.duckdb'}") as warehouse:
        assert len(_events(warehouse)) == 4


@pytest.mark.integration
def test_postgres_import_streams_through_copy_and_is_idempotent(tmp_path, postgres_url):
    path = tmp_path / "clicks.csv"
    path.write_text(
        CSV + '7,u\x009,m1,pageview,1763632800,"1e400",x\n'
    )  # NUL: PostgreSQL text cannot hold it
    with Warehouse(postgres_url) as warehouse:
        first = import_events_file(warehouse, path, MAPPING, TYPES)
        second = import_events_file(warehouse, path, MAPPING, TYPES)
        events = _events(warehouse)
    assert first["events_inserted"] == 5 and second["events_inserted"] == 0
    assert events["7"][0] == "u\ufffd9" and events["7"][4] == float("inf")
    assert events["2"] == ("u1", "m2", "purchase", dt.datetime(2026, 11, 20, 8, 0), None)
