"""Stage 1, extract: the run's window of clickstream events and the item catalog, into Parquet."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pmg_tasks.extraction_window import extraction_window
from pmg_tasks.layout import run_key
from pmg_tasks.store import ObjectStore, open_store
from pmg_tasks.warehouse import Warehouse, connect, events_schema, items_schema, load_sql

if TYPE_CHECKING:
    import pyarrow as pa

    from pmg_tasks.settings import Settings

log = logging.getLogger(__name__)


def extract_clickstream(settings: Settings, ds: str, chunk_rows: int = 500_000) -> dict:
    """Write `events.parquet` (events with event_ts in the run's window) and `items.parquet`.

    The window comes from the run date and the lookback, never from Airflow's data interval, so a rerun
    of the same date reads the same rows and writes the same bytes.
    """
    window_start, window_end = extraction_window(ds, settings.lookback_days)
    store = open_store(settings)
    with connect(settings) as warehouse:
        events = _stream_to_parquet(
            warehouse, store, run_key(ds, "events.parquet"), load_sql("extract_events.sql"),
            {"window_start": window_start, "window_end": window_end}, events_schema(), chunk_rows,
        )
        items = _stream_to_parquet(
            warehouse, store, run_key(ds, "items.parquet"), load_sql("extract_items.sql"), {},
            items_schema(), chunk_rows,
        )
    log.info("extracted %d events in [%s, %s) and %d items", events, window_start, window_end, items)
    return {
        "events": events,
        "items": items,
        "window_start": window_start.isoformat(),
        "window_end": window_end.isoformat(),
        "events_key": run_key(ds, "events.parquet"),
        "items_key": run_key(ds, "items.parquet"),
    }


def _stream_to_parquet(
    warehouse: Warehouse, store: ObjectStore, key: str, sql: str, params: dict, schema: pa.Schema,
    chunk_rows: int,
) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    with store.writing(key) as path, pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for batch in warehouse.stream(sql, params, chunk_rows=chunk_rows):
            # Cast to the declared schema: engines disagree on widths (timestamp units, decimals).
            table = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
            writer.write_table(table, row_group_size=chunk_rows)
            rows += table.num_rows
    return rows
