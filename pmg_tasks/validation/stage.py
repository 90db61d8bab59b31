"""Stage 2, validate: events that break a rule go to quarantine with the reason, the rest go on.

Reads `events.parquet` and `items.parquet` of the run and writes, all under runs/ds=.../:

    events_valid.parquet  the valid events, schema events_schema(), sorted by (event_ts, event_id)
    quarantine.parquet    the other events, every original column + rule + reason, same order
    validation.json       counts per rule, the threshold, and the Great Expectations report

Nothing is dropped silently: extracted == valid + quarantined is checked before anything is published.
The run stops (BadDataError) when the quarantined fraction passes `settings.max_bad_fraction`, after
the three files are written, so the engineer has them to look at.

The row work is DuckDB SQL straight over the Parquet files, and the results stream back out in Arrow
batches, so memory stays bounded whatever the window holds (DuckDB spills sorts to a temporary folder).
Reruns write the same bytes: rows are sorted, row groups have a fixed size, and nothing depends on the
wall clock except the "in the future" cut-off, which a caller (and every test) can pin with `now`.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pmg_tasks.extraction_window import extraction_window
from pmg_tasks.layout import run_key
from pmg_tasks.store import open_store, write_json
from pmg_tasks.validation.rules import RULE_NAMES, RULES, reason_sql, rule_sql, sql_string
from pmg_tasks.validation.suite import GX_MAX_ROWS, run_suite
from pmg_tasks.warehouse import EVENT_COLUMNS, events_schema, items_schema

if TYPE_CHECKING:
    import duckdb
    import pandas as pd
    import pyarrow as pa

    from pmg_tasks.settings import Settings

log = logging.getLogger(__name__)

# Fixed output layout: part of what makes a rerun byte-for-byte identical.
ROW_GROUP_ROWS = 262_144
_BATCH_ROWS = 65_536
# DuckDB's working memory; sorts and joins beyond it spill to a temporary folder.
DUCKDB_MEMORY_LIMIT = "2GB"
EXTRACT_FIX = "the warehouse query (sql/extract_events.sql) must return"
CATALOG_FIX = "the catalog query (sql/extract_items.sql) must return"


class BadDataError(ValueError):
    """The run's input is not fit to go on: fix the data or the query; a retry will not help.

    `report` is the validation report when the error is the threshold (None for a schema error).
    """

    def __init__(self, message: str, *, report: dict | None = None):
        super().__init__(message)
        self.report = report


def validate_events(
    settings: Settings, ds: str, now: datetime | None = None, *, gx_max_rows: int = GX_MAX_ROWS
) -> dict:
    """Validate the run's events; write events_valid.parquet, quarantine.parquet and validation.json.

    `now` is the cut-off for timestamps in the future (default: the current UTC time; an aware datetime
    is converted to naive UTC). Above `gx_max_rows` events, GX runs on a systematic sample.
    Returns counts and keys (small enough for XCom). Raises BadDataError on a schema mismatch (before any
    row work) or when the bad fraction passes settings.max_bad_fraction (after writing the outputs).
    """
    import pyarrow.parquet as pq

    started = time.monotonic()
    window_start, window_end = extraction_window(ds, settings.lookback_days)
    cutoff = _naive_utc(now)
    store = open_store(settings)
    events_key, items_key = run_key(ds, "events.parquet"), run_key(ds, "items.parquet")
    valid_key, quarantine_key = run_key(ds, "events_valid.parquet"), run_key(ds, "quarantine.parquet")
    report_key = run_key(ds, "validation.json")

    with store.reading(events_key) as events_path, store.reading(items_key) as items_path:
        ignored_columns = check_schema(pq.read_schema(events_path), events_schema(), events_key, EXTRACT_FIX)
        check_schema(pq.read_schema(items_path), _catalog_schema(), items_key, CATALOG_FIX)
        extracted = pq.ParquetFile(events_path).metadata.num_rows

        with tempfile.TemporaryDirectory(prefix="pmg-validate-") as spill, _connect(spill) as con:
            _prepare(con, str(events_path), str(items_path), window_start, window_end, cutoff)
            counts = dict(con.sql("SELECT rule, count(*) FROM flagged GROUP BY rule").fetchall())
            by_rule = {name: int(counts.get(name, 0)) for name in RULE_NAMES}
            with store.writing(quarantine_key) as q_path, store.writing(valid_key) as v_path:
                _write_sorted(con, _quarantine_sql(), q_path, quarantine_schema())
                _write_sorted(con, _valid_sql(), v_path, events_schema())
                # Count what actually landed in the files, and refuse to publish if rows went missing.
                quarantined = pq.ParquetFile(q_path).metadata.num_rows
                valid = pq.ParquetFile(v_path).metadata.num_rows
                _check_conservation(extracted, valid, quarantined, by_rule)
            log.info(
                "validated %d events in [%s, %s): %d valid, %d quarantined (%.1f s)",
                extracted,
                window_start,
                window_end,
                valid,
                quarantined,
                time.monotonic() - started,
            )
            frame, scope = _gx_frame(con, extracted, gx_max_rows)

    gx_started = time.monotonic()
    gx_report = run_suite(frame, window_start=window_start, window_end=window_end, scope=scope)
    del frame
    log.info(
        "great expectations: success=%s on %s (%.1f s)",
        gx_report["success"],
        scope["description"],
        time.monotonic() - gx_started,
    )

    bad_fraction = quarantined / extracted if extracted else 0.0
    passed = bad_fraction <= settings.max_bad_fraction
    report = {
        "ds": ds,
        "extracted": extracted,
        "valid": valid,
        "quarantined": quarantined,
        "bad_fraction": bad_fraction,
        "threshold": settings.max_bad_fraction,
        "passed": passed,
        "by_rule": by_rule,
        "rules": [{"name": rule.name, "reason": rule.reason} for rule in RULES],
        "window": {"start": window_start.isoformat(), "end": window_end.isoformat()},
        "ignored_columns": ignored_columns,
        "events_key": events_key,
        "valid_key": valid_key,
        "quarantine_key": quarantine_key,
        "gx": gx_report,
    }
    write_json(store, report_key, report)
    for name, count in by_rule.items():
        if count:
            log.warning("quarantined %d events: %s", count, name)

    if not passed:
        raise BadDataError(
            _threshold_message(
                extracted, bad_fraction, settings.max_bad_fraction, by_rule, quarantine_key, report_key
            ),
            report=report,
        )
    return {
        "extracted": extracted,
        "valid": valid,
        "quarantined": quarantined,
        "bad_fraction": bad_fraction,
        "valid_key": valid_key,
        "quarantine_key": quarantine_key,
        "report_key": report_key,
    }


# -- schema ------------------------------------------------------------------------------------------


def quarantine_schema() -> pa.Schema:
    import pyarrow as pa

    return events_schema().append(pa.field("rule", pa.string())).append(pa.field("reason", pa.string()))


def _catalog_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([items_schema().field("item_id")])


def check_schema(found: pa.Schema, expected: pa.Schema, what: str, fix: str) -> list[str]:
    """Raise BadDataError unless `found` has every column of `expected` with a compatible type.

    Compatible: the same type; any text type for a string column (string, large_string, string_view,
    dictionary of text); or the null type (a column with no values). Returns the extra columns, which
    validation ignores.
    """
    problems, fixes = [], []
    for field in expected:
        index = found.get_field_index(field.name)
        if index < 0:
            problems.append(f"column {field.name!r} is missing")
            fixes.append(f"{field.name} as {field.type}")
        elif not _compatible(found.field(index).type, field.type):
            problems.append(
                f"column {field.name!r} has type {found.field(index).type}, expected {field.type}"
            )
            fixes.append(f"{field.name} as {field.type} (found {found.field(index).type})")
    if problems:
        raise BadDataError(
            f"{what} cannot be validated: "
            + "; ".join(problems)
            + f". Fix: {fix} "
            + ", ".join(fixes)
            + f" (expected columns: {', '.join(f'{f.name} {f.type}' for f in expected)};"
            f" found: {', '.join(f'{f.name} {f.type}' for f in found) or 'none'})."
        )
    return sorted(set(found.names) - set(expected.names))


def _compatible(found: pa.DataType, expected: pa.DataType) -> bool:
    import pyarrow as pa

    def is_text(t: pa.DataType) -> bool:
        if pa.types.is_dictionary(t):
            t = t.value_type
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)

    return found == expected or pa.types.is_null(found) or (is_text(expected) and is_text(found))


# -- DuckDB ------------------------------------------------------------------------------------------


def _connect(spill_dir: str) -> duckdb.DuckDBPyConnection:
    import duckdb

    return duckdb.connect(
        config={
            "memory_limit": DUCKDB_MEMORY_LIMIT,
            "temp_directory": spill_dir,
            "preserve_insertion_order": True,
        }
    )


def _prepare(
    con: duckdb.DuckDBPyConnection,
    events_path: str,
    items_path: str,
    window_start: datetime,
    window_end: datetime,
    now: datetime,
) -> None:
    """Views over the input files and the `flagged` table: (_row, rule) of every row that breaks a rule."""
    schema = events_schema()
    columns = ",\n  ".join(
        f"CAST({name} AS {_duck_type(schema.field(name).type)}) AS {name}" for name in EVENT_COLUMNS
    )
    # Paths are ours (store temp files), but quote them properly anyway: views cannot take parameters.
    con.execute(
        f"CREATE TEMP VIEW events AS SELECT file_row_number AS _row,\n  {columns}\n"
        f"FROM read_parquet({sql_string(events_path)}, file_row_number = true)"
    )
    con.execute(
        "CREATE TEMP VIEW catalog AS SELECT DISTINCT CAST(item_id AS VARCHAR) AS item_id "
        f"FROM read_parquet({sql_string(items_path)}) WHERE item_id IS NOT NULL"
    )
    con.execute("SET VARIABLE pmg_window_start = $1", [window_start])
    con.execute("SET VARIABLE pmg_window_end = $1", [window_end])
    con.execute("SET VARIABLE pmg_now = $1", [now])
    con.execute(
        "CREATE TEMP VIEW events_in_context AS SELECT e.*, "
        "CAST(getvariable('pmg_window_start') AS TIMESTAMP) AS _window_start, "
        "CAST(getvariable('pmg_window_end') AS TIMESTAMP) AS _window_end, "
        "CAST(getvariable('pmg_now') AS TIMESTAMP) AS _now FROM events e"
    )
    con.execute(
        f"""
        CREATE TEMP TABLE flagged AS
        WITH duplicated AS (
            SELECT event_id FROM events WHERE event_id IS NOT NULL GROUP BY event_id HAVING count(*) > 1
        ),
        ranked AS (
            SELECT _row, row_number() OVER (PARTITION BY event_id ORDER BY event_ts NULLS LAST, _row)
                AS _occurrence
            FROM events WHERE event_id IN (SELECT event_id FROM duplicated)
        ),
        candidates AS (
            SELECT e.*, c.item_id IS NOT NULL AS _in_catalog, coalesce(r._occurrence, 1) AS _occurrence
            FROM events_in_context e
            LEFT JOIN catalog c ON c.item_id = e.item_id
            LEFT JOIN ranked r ON r._row = e._row
        )
        SELECT _row, rule FROM (SELECT _row, {rule_sql()} AS rule FROM candidates) WHERE rule IS NOT NULL
        """
    )


def _duck_type(arrow_type: pa.DataType) -> str:
    import pyarrow as pa

    if pa.types.is_string(arrow_type):
        return "VARCHAR"
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMP"
    if pa.types.is_float64(arrow_type):
        return "DOUBLE"
    raise TypeError(f"no DuckDB type for {arrow_type}")


def _valid_sql() -> str:
    return (
        f"SELECT {', '.join(f'e.{c}' for c in EVENT_COLUMNS)} FROM events e "
        "ANTI JOIN flagged f ON f._row = e._row ORDER BY e.event_ts, e.event_id, e._row"
    )


def _quarantine_sql() -> str:
    return (
        f"SELECT {', '.join(f'e.{c}' for c in EVENT_COLUMNS)}, f.rule, {reason_sql(rule_column='f.rule')} "
        "AS reason FROM events_in_context e JOIN flagged f ON f._row = e._row "
        "ORDER BY e.event_ts NULLS LAST, e.event_id NULLS LAST, e._row"
    )


def _write_sorted(con: duckdb.DuckDBPyConnection, sql: str, path, schema: pa.Schema) -> int:
    """Stream the rows of `sql` into a Parquet file with row groups of exactly ROW_GROUP_ROWS (the
    last one shorter), whatever batch sizes DuckDB hands out, so equal rows make equal bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pending: list[pa.RecordBatch] = []
    pending_rows = written = 0
    reader = con.sql(sql).to_arrow_reader(_BATCH_ROWS)
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for batch in reader:
            pending.append(batch.cast(schema))
            pending_rows += batch.num_rows
            while pending_rows >= ROW_GROUP_ROWS:
                table = pa.Table.from_batches(pending, schema=schema)
                writer.write_table(table.slice(0, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
                rest = table.slice(ROW_GROUP_ROWS)
                pending, pending_rows = rest.to_batches(), rest.num_rows
                written += ROW_GROUP_ROWS
        if pending_rows:
            writer.write_table(pa.Table.from_batches(pending, schema=schema), row_group_size=ROW_GROUP_ROWS)
            written += pending_rows
    return written


def _check_conservation(extracted: int, valid: int, quarantined: int, by_rule: dict[str, int]) -> None:
    if extracted != valid + quarantined or sum(by_rule.values()) != quarantined:
        raise RuntimeError(
            f"validation lost or invented rows: extracted {extracted} != valid {valid} + quarantined "
            f"{quarantined} (rule counts sum to {sum(by_rule.values())}); nothing was published"
        )


def _gx_frame(con: duckdb.DuckDBPyConnection, extracted: int, max_rows: int) -> tuple[pd.DataFrame, dict]:
    """The events GX looks at: all of them, or every k-th row in file order above `max_rows`."""
    columns = ", ".join(EVENT_COLUMNS)
    if extracted <= max_rows:
        stride = 1
        sql = f"SELECT {columns} FROM events ORDER BY _row"
    else:
        stride = math.ceil(extracted / max(max_rows, 1))
        sql = f"SELECT {columns} FROM events WHERE _row % {stride} = 0 ORDER BY _row"
    frame = con.sql(sql).to_arrow_table().cast(events_schema()).to_pandas()
    sampled = stride > 1
    scope = {
        "rows": len(frame),
        "of_rows": extracted,
        "sampled": sampled,
        "sample_every": stride,
        "columns": list(EVENT_COLUMNS),
        "description": (
            f"a sample of {len(frame):,} of {extracted:,} events (every {stride}th row in file order)"
            if sampled
            else f"all {extracted:,} events"
        ),
    }
    return frame, scope


# -- helpers -----------------------------------------------------------------------------------------


def _naive_utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC).replace(tzinfo=None)
    if now.tzinfo is not None:
        return now.astimezone(UTC).replace(tzinfo=None)
    return now


def _percents(value: float, limit: float) -> tuple[str, str]:
    """value and limit as percentages, with as many decimals as it takes to tell them apart."""
    for digits in range(1, 5):
        shown = f"{value:.{digits}%}", f"{limit:.{digits}%}"
        if shown[0] != shown[1]:
            return shown
    return shown


def _threshold_message(
    extracted: int,
    bad_fraction: float,
    limit: float,
    by_rule: dict[str, int],
    quarantine_key: str,
    report_key: str,
) -> str:
    failing = sorted(
        ((n, c) for n, c in by_rule.items() if c), key=lambda nc: (-nc[1], RULE_NAMES.index(nc[0]))
    )
    shown, shown_limit = _percents(bad_fraction, limit)
    counts = ", ".join(f"{name}={count:,}" for name, count in failing)
    return (
        f"{shown} of {extracted:,} events failed validation (max {shown_limit}): {counts}; "
        f"see {quarantine_key} (rows with rule and reason) and {report_key}"
    )
