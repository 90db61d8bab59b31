"""Stage 1, extract: the run's window of clickstream events and the item catalog, into Parquet.

Writes, under runs/ds=.../:

    events.parquet            events with event_ts in the run's window, ordered by (event_ts, event_id, ...)
    items.parquet             the item catalog, cleaned (validation/items.py), one row per item_id
    items_quarantine.parquet  catalog rows that broke a hard item rule, with rule and reason
    items_validation.json     the catalog's counts: extracted, valid, quarantined, per rule, fixes, flags
    events_outside_windows.json  how many events of the whole warehouse no run's window can hold (dated
                              before settings.validation.plausible_since, after now + 1 day, or undated)

Events are read for the window [window_start, window_end) that the run date and the lookback define
(extraction_window.py), never from Airflow's data interval, so a rerun of a date reads the same rows and
writes the same bytes. On DuckDB the rows go from the engine into the Parquet file without passing through
Python; on other engines they stream through a server-side cursor, `chunk_rows` at a time. Either way
memory stays bounded whatever the window holds.

The catalog is validated here, where it is first materialised: downstream stages read items.parquet, so it
is written once, already clean, by the stage that owns it; event validation then quarantines events whose
item was quarantined (rule item_quarantined).
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from pmg_tasks.extraction_window import extraction_window, plausible_span
from pmg_tasks.layout import run_key
from pmg_tasks.store import ObjectStore, open_store, write_json
from pmg_tasks.validation.items import CatalogCheck, check_catalog, items_quarantine_schema
from pmg_tasks.warehouse import Warehouse, connect, events_schema, items_schema, load_sql

if TYPE_CHECKING:
    import pyarrow as pa

    from pmg_tasks.settings import Settings

log = logging.getLogger(__name__)

ITEM_CHUNK_ROWS = 10_000


def extract_clickstream(
    settings: Settings, ds: str, chunk_rows: int = 500_000, *, now: datetime | None = None
) -> dict:
    """Write events.parquet (events with event_ts in the run's window), the cleaned items.parquet, the
    catalog's quarantine and report, and the count of the warehouse's events outside every plausible
    window. `now` (default: the current UTC time) places that last window's end. Returns counts and keys
    (small enough for XCom)."""
    window_start, window_end = extraction_window(ds, settings.lookback_days)
    store = open_store(settings)
    keys = {
        "events": run_key(ds, "events.parquet"),
        "items": run_key(ds, "items.parquet"),
        "items_quarantine": run_key(ds, "items_quarantine.parquet"),
        "items_report": run_key(ds, "items_validation.json"),
        "outside_windows": run_key(ds, "events_outside_windows.json"),
    }
    started = time.monotonic()
    with connect(settings) as warehouse:
        events = _extract_events(
            warehouse,
            store,
            keys["events"],
            {"window_start": window_start, "window_end": window_end},
            chunk_rows,
        )
        log.info(
            "extracted %d events in [%s, %s) (%.1f s)",
            events,
            window_start,
            window_end,
            time.monotonic() - started,
        )
        catalog = _extract_items(warehouse, store, keys["items"], keys["items_quarantine"])
        outside = count_events_outside_windows(warehouse, settings.validation.plausible_since, now)
    write_json(store, keys["outside_windows"], outside)
    if outside["total"]:
        log.warning(
            "the warehouse holds %d events no run's window can hold: %d dated before %s, %d after %s, "
            "%d undated; fix their event_ts at the source",
            outside["total"], outside["before_floor"], outside["floor"], outside["after_ceiling"],
            outside["ceiling"], outside["undated"],
        )  # fmt: skip
    report = catalog.report()
    write_json(store, keys["items_report"], report)
    log.info(
        "extracted %d items: %d kept, %d quarantined", catalog.extracted, catalog.valid, catalog.quarantined
    )
    for name, count in report["by_rule"].items():
        if count:
            log.warning("quarantined %d catalog rows: %s", count, name)
    for name, count in {**report["fixes"], **report["flags"]}.items():
        if count:
            log.info("catalog: %d items %s", count, name.replace("_", " "))
    return {
        "events": events,
        "items": catalog.valid,
        "window_start": window_start.isoformat(),
        "window_end": window_end.isoformat(),
        "events_key": keys["events"],
        "items_key": keys["items"],
        "items_extracted": catalog.extracted,
        "items_quarantined": catalog.quarantined,
        "items_quarantine_key": keys["items_quarantine"],
        "items_report_key": keys["items_report"],
        "events_outside_windows": outside["total"],
        "events_outside_windows_key": keys["outside_windows"],
    }


def count_events_outside_windows(warehouse: Warehouse, floor: date, now: datetime | None = None) -> dict:
    """How many of the warehouse's events lie outside every plausible window: before `floor`, after
    `now` + 1 day, or with no event_ts. These are never extracted, so no validation would count them."""
    start, end = plausible_span(floor, datetime.now(UTC) if now is None else now)
    bounds = {"floor": start, "ceiling": end}
    ((before, after, undated),) = warehouse.fetch_rows(load_sql("count_events_outside_windows.sql"), bounds)
    return {
        "before_floor": int(before),
        "after_ceiling": int(after),
        "undated": int(undated),
        "total": int(before) + int(after) + int(undated),
        "floor": bounds["floor"].isoformat(),
        "ceiling": bounds["ceiling"].isoformat(timespec="seconds"),
    }


def _extract_events(warehouse: Warehouse, store: ObjectStore, key: str, params: dict, chunk_rows: int) -> int:
    sql = load_sql("extract_events.sql")
    with store.writing(key) as path:
        if not warehouse.is_duckdb:
            batches = warehouse.stream(sql, params, chunk_rows, events_schema())
            return _stream_to_parquet(batches, path, events_schema())
        with warehouse.snapshot():
            # Sorting is most of the cost of a big window; a table appended in time order needs none.
            if not warehouse.fetch_rows(load_sql("duckdb_events_in_order.sql"), params):
                log.info("the window is stored in (event_ts, event_id) order: extracting without a sort")
                sql = without_order_by(sql)
            return warehouse.copy_to_parquet(sql, params, path, events_schema())


def without_order_by(sql: str) -> str:
    """`sql` without its final ORDER BY clause (our own queries only: it must be the last clause)."""
    stripped = re.sub(r"\s+ORDER\s+BY\s[^;]*?;?\s*$", "", sql.strip(), flags=re.IGNORECASE | re.DOTALL)
    if stripped == sql.strip():
        raise ValueError("the query has no final ORDER BY clause")
    return stripped


def _stream_to_parquet(batches, path, schema: pa.Schema) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for batch in batches:
            # One row group per batch: batches have a fixed size, so equal rows make equal bytes.
            writer.write_table(
                pa.Table.from_batches([batch], schema=schema), row_group_size=max(batch.num_rows, 1)
            )
            rows += batch.num_rows
    return rows


def _extract_items(
    warehouse: Warehouse, store: ObjectStore, items_key: str, quarantine_key: str
) -> CatalogCheck:
    import pyarrow.parquet as pq

    state = CatalogCheck()
    rows = warehouse.stream_rows(load_sql("extract_items.sql"), {}, chunk_rows=ITEM_CHUNK_ROWS)
    with (
        store.writing(items_key) as items_path,
        store.writing(quarantine_key) as quarantine_path,
        pq.ParquetWriter(items_path, items_schema(), compression="zstd") as items_writer,
        pq.ParquetWriter(quarantine_path, items_quarantine_schema(), compression="zstd") as quarantine_writer,
    ):
        for kept, quarantined in check_catalog(rows, state):
            if kept.num_rows:
                items_writer.write_table(kept)
            if quarantined.num_rows:
                quarantine_writer.write_table(quarantined)
    return state
