"""The demo seeds an empty warehouse or its own, and refuses one that holds anything it did not seed."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from pmg_tasks.cli import main, seed_demo
from pmg_tasks.demo.ownership import MARKER_TABLE, DemoWarehouseInUse
from pmg_tasks.settings import Settings
from pmg_tasks.warehouse import Warehouse, connect

SEED = ["demo", "seed", "--ds", "2026-11-20", "--users", "10", "--items", "8", "--days", "2"]


def counts(settings: Settings) -> dict[str, int]:
    with connect(settings) as warehouse:
        return {t: int(warehouse.fetch_rows(f"SELECT count(*) FROM {t}")[0][0]) for t in ("items", "users", "events")}


def own_catalog(warehouse: Warehouse) -> None:
    warehouse.apply_ddl()
    warehouse.insert_frame(
        "items", pd.DataFrame({"item_id": ["sku-1"], "title": ["Wilton Bench Vise"], "updated_at": [pd.NaT]})
    )


def test_demo_seeds_an_empty_warehouse_and_reseeds_its_own(settings, monkeypatch):
    monkeypatch.setenv("PMG_HOME", str(settings.home))
    assert main(SEED) == 0
    first = counts(settings)
    assert first["items"] == 8 and first["events"] > 0
    with connect(settings) as warehouse:
        assert warehouse.has_table(MARKER_TABLE)
    assert main(SEED) == 0  # its own seed: replaced, not refused
    assert counts(settings) == first


def test_demo_refuses_a_warehouse_with_someone_elses_data(settings, monkeypatch, capsys):
    with connect(settings) as warehouse:
        own_catalog(warehouse)
    monkeypatch.setenv("PMG_HOME", str(settings.home))

    assert main(SEED) == 2
    message = capsys.readouterr().err
    assert "holds data the demo did not seed (1 items)" in message
    assert "PMG_HOME=" in message and "PMG_WAREHOUSE_URL=" in message
    assert counts(settings) == {"items": 1, "users": 0, "events": 0}
    assert main(["demo", "run", "--ds", "2026-11-20"]) == 2  # before any model is built or Airflow started
    assert not (settings.home / "models").exists() and not (settings.home / "airflow").exists()
    assert counts(settings) == {"items": 1, "users": 0, "events": 0}


def test_rows_added_after_a_demo_seed_make_the_warehouse_someone_elses(settings):
    seed_demo(settings, "2026-11-20", users=10, items=8, days=2, overwrite_campaigns=True)
    with connect(settings) as warehouse:
        warehouse.insert_frame(
            "events",
            pd.DataFrame({"event_id": ["mine-1"], "user_id": ["u1"], "item_id": ["m00000"], "session_id": ["s"],
                          "event_type": ["view"], "event_ts": [dt.datetime(2026, 11, 20)], "dwell_seconds": [1.0]}),
        )
    before = counts(settings)
    with pytest.raises(DemoWarehouseInUse, match="did not seed"):
        seed_demo(settings, "2026-11-20", users=10, items=8, days=2, overwrite_campaigns=True)
    assert counts(settings) == before


@pytest.mark.integration
def test_demo_refuses_a_postgres_warehouse_it_did_not_seed(postgres_url, tmp_path):
    settings = Settings(home=tmp_path / "pmg", warehouse_url=postgres_url)
    with connect(settings) as warehouse:
        own_catalog(warehouse)
    with pytest.raises(DemoWarehouseInUse, match="1 items"):
        seed_demo(settings, "2026-11-20", users=10, items=8, days=2, overwrite_campaigns=True)
    assert counts(settings)["items"] == 1

    empty = Settings(home=tmp_path / "pmg", warehouse_url=postgres_url)
    with connect(empty) as warehouse:
        warehouse.execute("DELETE FROM items")
    seed_demo(empty, "2026-11-20", users=10, items=8, days=2, overwrite_campaigns=True)
    seed_demo(empty, "2026-11-20", users=10, items=8, days=2, overwrite_campaigns=True)
    assert counts(empty)["items"] == 8
