"""Fixtures of the validation tests: settings over a temporary store, and a way to put a run's inputs."""

from __future__ import annotations

import pyarrow as pa
import pytest
from validation_data import DS, items_table

from pmg_tasks.layout import run_key
from pmg_tasks.settings import Settings
from pmg_tasks.store import LocalStore, write_table
from pmg_tasks.warehouse import events_schema


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path, store_root=str(tmp_path / "store"), lookback_days=1, max_bad_fraction=1.0)


@pytest.fixture
def store(settings) -> LocalStore:
    return LocalStore(settings.store_root)


@pytest.fixture
def put_inputs(store):
    """put_inputs(events) writes events.parquet (rows or a table) and the catalog for DS."""

    def put(events: list[dict] | pa.Table, items: pa.Table | None = None) -> None:
        table = (
            events if isinstance(events, pa.Table) else pa.Table.from_pylist(events, schema=events_schema())
        )
        write_table(store, run_key(DS, "events.parquet"), table)
        write_table(store, run_key(DS, "items.parquet"), items if items is not None else items_table())

    return put
