"""Stage 2, validate: events that break a rule go to quarantine with the reason, the rest go on.

Reads `events.parquet` and `items.parquet` of the run (and, when extraction wrote it,
`items_quarantine.parquet`) and writes, all under runs/ds=.../:

    events_valid.parquet  the valid events, schema events_schema(), sorted by (event_ts, event_id)
    quarantine.parquet    the other events, every original column + rule + reason, same order
    validation.json       counts per rule, the threshold, the catalog's report and the Great Expectations
                          report

Nothing is dropped silently: extracted == valid + quarantined is checked before anything is published.
The run stops (BadDataError) when the quarantined fraction passes `settings.max_bad_fraction`, after
the three files are written, so the engineer has them to look at. Exact copies of an event (an
at-least-once redelivery) are quarantined but, with settings.validation.exact_duplicates_exempt (the
default), left out of that fraction: (quarantined - exact copies) / (extracted - exact copies).

How it stays fast (ten million events in seconds on two cores, see benchmarks/extract_validate.py and
docs/warehouse.md): the row work is DuckDB SQL straight over the Parquet files, and each file is written
by DuckDB itself.

1. Extraction writes events ordered by (event_ts, event_id). One streaming pass checks that order; when it
   holds, the valid file keeps the input order and nothing is sorted. Otherwise (a file from elsewhere)
   the valid rows are sorted, which gives the same bytes.
2. Duplicated event_ids: their 64-bit hashes, sorted in numpy, give the few candidate rows, which are ranked
   by their real id; the row numbers of the later copies are kept.
3. One pass evaluates the rules (rules.py, written to be cheap) and keeps the broken rows, which are
   few, and the GX sample in a table; the broken rows' numbers become a bitmap.
4. The valid file is the input minus the bitmap's rows: a scan and a scalar bit test, no join (a join is
   free to reorder rows). The quarantine file is the broken rows, sorted.
5. Great Expectations runs on a sample; for a big window on a machine with an idle CPU, in a worker process
   started first, so that its import overlaps the row work (gx_worker.py).

Reruns write the same bytes: rows come out in a canonical order, row groups have a fixed size, and
nothing depends on the wall clock except the "in the future" cut-off, which a caller (and every test)
can pin with `now`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pmg_tasks.extraction_window import extraction_window
from pmg_tasks.layout import run_key
from pmg_tasks.store import ObjectStore, open_store, read_json, write_json
from pmg_tasks.validation.gx_worker import GxWorker
from pmg_tasks.validation.rules import (
    RULE_NAMES,
    RULES,
    clean_id_sql,
    reason_sql,
    rule_sql,
    sql_string,
    suspect_ids_sql,
)
from pmg_tasks.validation.suite import run_suite
from pmg_tasks.warehouse import (
    EVENT_COLUMNS,
    PARQUET_COPY_OPTIONS,
    events_schema,
    items_schema,
    nullable_column,
)

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from pmg_tasks.settings import Settings

log = logging.getLogger(__name__)

EXTRACT_FIX = "the warehouse query (sql/extract_events.sql) must return"
CATALOG_FIX = "the catalog query (sql/extract_items.sql) must return"
# From this many events on, GX runs in a worker process (gx_worker.py); below, starting one costs more.
GX_WORKER_MIN_ROWS = 1_000_000
# get_bit takes an INTEGER position: one run's window may hold up to 2**31 - 1 events.
MAX_EVENTS = 2**31 - 1


class BadDataError(ValueError):
    """The run's input is not fit to go on: fix the data or the query; a retry will not help.

    `report` is the validation report when the error is the threshold (None for a schema error).
    """

    def __init__(self, message: str, *, report: dict | None = None):
        super().__init__(message)
        self.report = report


def validate_events(
    settings: Settings, ds: str, now: datetime | None = None, *, gx_max_rows: int | None = None
) -> dict:
    """Validate the run's events; write events_valid.parquet, quarantine.parquet and validation.json.

    `now` is the cut-off for timestamps in the future (default: the current UTC time; an aware datetime
    is converted to naive UTC). Above `gx_max_rows` events (default settings.gx_max_rows), GX runs on a
    systematic sample. Returns counts and keys (small enough for XCom). Raises BadDataError on a schema
    mismatch (before any row work) or when the bad fraction passes settings.max_bad_fraction (after
    writing the outputs).
    """
    import pyarrow.parquet as pq

    started = time.monotonic()
    gx_max_rows = settings.gx_max_rows if gx_max_rows is None else gx_max_rows
    window_start, window_end = extraction_window(ds, settings.lookback_days)
    cutoff = _naive_utc(now)
    store = open_store(settings)
    events_key, items_key = run_key(ds, "events.parquet"), run_key(ds, "items.parquet")
    valid_key, quarantine_key = run_key(ds, "events_valid.parquet"), run_key(ds, "quarantine.parquet")
    items_quarantine_key = run_key(ds, "items_quarantine.parquet")
    report_key = run_key(ds, "validation.json")

    with (
        store.reading(events_key) as events_path,
        store.reading(items_key) as items_path,
        _reading_if_present(store, items_quarantine_key) as items_quarantine_path,
    ):
        ignored_columns = check_schema(pq.read_schema(events_path), events_schema(), events_key, EXTRACT_FIX)
        check_schema(pq.read_schema(items_path), _catalog_schema(), items_key, CATALOG_FIX)
        extracted = pq.ParquetFile(events_path).metadata.num_rows
        if extracted > MAX_EVENTS:
            raise BadDataError(
                f"{events_key} holds {extracted:,} events; one run validates at most {MAX_EVENTS:,}"
            )

        # For a big window GX runs in a worker process started now, so its import overlaps the row work.
        worker = GxWorker() if _use_gx_worker(extracted) else None
        try:
            with (
                tempfile.TemporaryDirectory(prefix="pmg-validate-") as spill,
                _connect(spill, settings.duckdb_memory_limit) as con,
            ):
                steps = _Steps()
                _prepare(
                    con,
                    str(events_path),
                    str(items_path),
                    items_quarantine_path,
                    window_start,
                    window_end,
                    cutoff,
                )
                in_order = steps.run("order check", lambda: _is_in_order(con)) if extracted else True
                steps.run("duplicates", lambda: _mark_later_copies(con, extracted))
                stride = _gx_stride(extracted, gx_max_rows)
                steps.run("rules", lambda: _flag(con, extracted, stride))
                counts = dict(con.sql("SELECT rule, count(*) FROM flagged GROUP BY rule").fetchall())
                by_rule = {name: int(counts.get(name, 0)) for name in RULE_NAMES}
                with store.writing(quarantine_key) as q_path, store.writing(valid_key) as v_path:
                    steps.run("quarantine.parquet", lambda: con.execute(_quarantine_copy(q_path)).fetchall())
                    steps.run(
                        "events_valid.parquet", lambda: con.execute(_valid_copy(v_path, in_order)).fetchall()
                    )
                    # Count what actually landed in the files, and refuse to publish if rows went missing.
                    quarantined = pq.ParquetFile(q_path).metadata.num_rows
                    valid = pq.ParquetFile(v_path).metadata.num_rows
                    _check_conservation(extracted, valid, quarantined, by_rule)
                log.info(
                    "validated %d events in [%s, %s): %d valid, %d quarantined (%.1f s; input %s)",
                    extracted,
                    window_start,
                    window_end,
                    valid,
                    quarantined,
                    time.monotonic() - started,
                    "in (event_ts, event_id) order, kept" if in_order else "not in order, sorted",
                )
                gx_report = steps.run(
                    "great expectations",
                    lambda: _great_expectations(
                        con, worker, spill, extracted, stride, window_start, window_end
                    ),
                )
                log.info("validation steps: %s", steps)
        finally:
            if worker is not None:
                worker.close()
    scope = gx_report["scope"]
    log.info("great expectations: success=%s on %s", gx_report["success"], scope["description"])

    items_report_key = run_key(ds, "items_validation.json")
    items_report = read_json(store, items_report_key) if store.exists(items_report_key) else None
    outside_key = run_key(ds, "events_outside_windows.json")
    outside = read_json(store, outside_key) if store.exists(outside_key) else None
    # A redelivered copy is no sign of bad data: it leaves both sides of the fraction (when exempt).
    exempt = by_rule["exact_duplicate_event"] if settings.validation.exact_duplicates_exempt else 0
    counted = quarantined - exempt
    bad_fraction = counted / (extracted - exempt) if extracted - exempt else 0.0
    passed = bad_fraction <= settings.max_bad_fraction
    report = {
        "ds": ds,
        "extracted": extracted,
        "valid": valid,
        "quarantined": quarantined,
        "exact_duplicates": by_rule["exact_duplicate_event"],
        "exact_duplicates_exempt": settings.validation.exact_duplicates_exempt,
        "counted_toward_threshold": counted,
        "bad_fraction": bad_fraction,
        "threshold": settings.max_bad_fraction,
        "passed": passed,
        "events_outside_windows": outside,
        "by_rule": by_rule,
        "rules": [{"name": rule.name, "reason": rule.reason} for rule in RULES],
        "window": {"start": window_start.isoformat(), "end": window_end.isoformat()},
        "ignored_columns": ignored_columns,
        "events_key": events_key,
        "valid_key": valid_key,
        "quarantine_key": quarantine_key,
        "items": items_report,
        "items_quarantine_key": items_quarantine_key if store.exists(items_quarantine_key) else None,
        "gx": gx_report,
    }
    write_json(store, report_key, report)
    for name, count in by_rule.items():
        if count:
            log.warning("quarantined %d events: %s", count, name)

    if not passed:
        counted_by_rule = dict(by_rule, exact_duplicate_event=by_rule["exact_duplicate_event"] - exempt)
        raise BadDataError(
            _threshold_message(
                extracted - exempt,
                bad_fraction,
                settings.max_bad_fraction,
                counted_by_rule,
                quarantine_key,
                report_key,
                exempt,
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


def _connect(spill_dir: str, memory_limit: str) -> duckdb.DuckDBPyConnection:
    import duckdb

    return duckdb.connect(
        config={
            "memory_limit": memory_limit or "2GB",
            "temp_directory": spill_dir,
            # Filters and projections keep the file's order: the valid file relies on it (no join touches it).
            "preserve_insertion_order": True,
        }
    )


@contextlib.contextmanager
def _reading_if_present(store: ObjectStore, key: str):
    if store.exists(key):
        with store.reading(key) as path:
            yield str(path)
    else:
        yield None


class _Steps:
    """Wall and CPU seconds (all threads) per step, for the log line."""

    def __init__(self) -> None:
        self.seconds: dict[str, tuple[float, float]] = {}

    def run(self, name: str, step):
        started, cpu = time.monotonic(), time.process_time()
        try:
            return step()
        finally:
            self.seconds[name] = (time.monotonic() - started, time.process_time() - cpu)

    def __str__(self) -> str:
        return ", ".join(
            f"{name} {wall:.1f} s (cpu {cpu:.1f} s)" for name, (wall, cpu) in self.seconds.items()
        )


def _prepare(
    con: duckdb.DuckDBPyConnection,
    events_path: str,
    items_path: str,
    items_quarantine_path: str | None,
    window_start: datetime,
    window_end: datetime,
    now: datetime,
) -> None:
    """The `events` view over the input file, the catalog lookups, and `events_in_context`: each event with
    the columns the rules use (rules.py)."""
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
        f"CREATE TEMP VIEW events_ids AS SELECT CAST(event_id AS VARCHAR) AS event_id "
        f"FROM read_parquet({sql_string(events_path)})"
    )
    # Only ids that pass the id rules go into the catalog, which is what lets the event rules skip item_id
    # checks for catalog ids. DISTINCT: the lookup joins must not multiply rows.
    con.execute(
        "CREATE TEMP TABLE catalog AS SELECT DISTINCT item_id FROM (SELECT CAST(item_id AS VARCHAR) "
        f"AS item_id FROM read_parquet({sql_string(items_path)})) WHERE {clean_id_sql('item_id')}"
    )
    if items_quarantine_path is not None:
        con.execute(
            "CREATE TEMP TABLE item_rules AS SELECT item_id, arg_min(rule, file_row_number) AS rule "
            f"FROM read_parquet({sql_string(items_quarantine_path)}, file_row_number = true) "
            "WHERE item_id IS NOT NULL AND item_id NOT IN (SELECT item_id FROM catalog) GROUP BY item_id"
        )
    else:
        con.execute("CREATE TEMP TABLE item_rules (item_id VARCHAR, rule VARCHAR)")
    con.execute("CREATE TEMP TABLE later_copies (_row BIGINT, exact BOOLEAN)")
    con.execute("SET VARIABLE pmg_window_start = $1", [window_start])
    con.execute("SET VARIABLE pmg_window_end = $1", [window_end])
    con.execute("SET VARIABLE pmg_now = $1", [now])
    # The joins here only feed the `checked` table, whose order does not matter; the valid file is written
    # from `events` alone. Without quarantined items there is nothing to join them with.
    quarantined_items = con.execute("SELECT count(*) FROM item_rules").fetchall()[0][0]
    item_rule, item_join = (
        ("r.rule", "LEFT JOIN item_rules r ON r.item_id = e.item_id ")
        if quarantined_items
        else ("CAST(NULL AS VARCHAR)", "")
    )
    con.execute(
        "CREATE TEMP VIEW events_in_context AS SELECT e.*, "
        "CAST(getvariable('pmg_window_start') AS TIMESTAMP) AS _window_start, "
        "CAST(getvariable('pmg_window_end') AS TIMESTAMP) AS _window_end, "
        "CAST(getvariable('pmg_now') AS TIMESTAMP) AS _now, "
        "c.item_id IS NOT NULL AS _in_catalog, "
        f"{suspect_ids_sql('c.item_id IS NOT NULL', 'e')} AS _suspect_ids, "
        f"{item_rule} IS NOT NULL AS _item_quarantined, "
        f"{item_rule} AS _item_rule, "
        "coalesce(NOT l.exact, false) AS _duplicate, "
        "coalesce(l.exact, false) AS _exact_duplicate "
        f"FROM events e LEFT JOIN catalog c ON c.item_id = e.item_id {item_join}"
        "LEFT JOIN later_copies l ON l._row = e._row"
    )


def _bit(variable: str, row: str) -> str:
    """SQL: whether bit `row` is set in the bit string held by `variable` (false when it holds NULL)."""
    return f"coalesce(get_bit(CAST(getvariable('{variable}') AS BIT), CAST({row} AS INTEGER)) = 1, false)"


def _is_in_order(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the rows with an event_ts and an event_id come in (event_ts, event_id) order in the file.

    A streaming window (lag over the file order): one pass, constant memory, and it stops at the first
    row out of order. Byte order for event_id, as DuckDB's ORDER BY (and extraction from DuckDB) has it.
    """
    out_of_order = con.sql(
        """
        SELECT 1 FROM (
            SELECT event_ts, event_id, lag(event_ts) OVER () AS previous_ts, lag(event_id) OVER () AS previous_id
            FROM events WHERE event_ts IS NOT NULL AND event_id IS NOT NULL
        )
        WHERE event_ts < previous_ts OR (event_ts = previous_ts AND event_id < previous_id)
        LIMIT 1
        """
    ).fetchall()
    return not out_of_order


def _mark_later_copies(con: duckdb.DuckDBPyConnection, extracted: int) -> None:
    """Fill `later_copies` with the row numbers of every copy of an event_id but the first (by event_ts,
    then file order), each with whether it is an exact copy of that first one (every column the same,
    nulls equal: an at-least-once redelivery) or a near-duplicate (the same id, other content).

    Repeated ids are found by sorting the ids' 64-bit hashes in numpy (8 bytes an event; several times
    cheaper than grouping ten million strings or hashes in SQL); the few rows whose hash repeats are then
    ranked by their real event_id, so a hash collision marks nothing.
    """
    import numpy as np
    import pyarrow as pa

    if not extracted:
        return
    # From the file without row numbers: the scan then reads event_id alone.
    hashes = np.sort(
        con.sql("SELECT hash(event_id) AS h FROM events_ids WHERE event_id IS NOT NULL")
        .to_arrow_table()
        .column(0)
        .to_numpy()
    )
    repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    del hashes
    if not len(repeated):
        return
    con.register("pmg_repeated_hashes", pa.table({"h": pa.array(repeated, pa.uint64())}))
    try:
        con.execute(
            """
            INSERT INTO later_copies
            SELECT _row, content IS NOT DISTINCT FROM first_content FROM (
                SELECT _row, content,
                       row_number() OVER copies AS occurrence,
                       first_value(content) OVER copies AS first_content
                FROM (
                    SELECT _row, event_id, event_ts,
                           struct_pack(user_id, item_id, session_id, event_type, event_ts, dwell_seconds) AS content
                    FROM events
                    WHERE event_id IS NOT NULL AND hash(event_id) IN (SELECT h FROM pmg_repeated_hashes)
                )
                WINDOW copies AS (PARTITION BY event_id ORDER BY event_ts NULLS LAST, _row)
            ) WHERE occurrence > 1
            """
        ).fetchall()
    finally:
        con.unregister("pmg_repeated_hashes")


def _flag(con: duckdb.DuckDBPyConnection, extracted: int, stride: int) -> None:
    """One pass over the events: `checked` keeps every broken row (whole, with its rule) and every
    `stride`-th row (the GX sample), so the sample costs no scan of its own. `flagged` is the broken rows;
    pmg_flagged their bitmap."""
    con.execute(
        f"CREATE TEMP TABLE checked AS SELECT * FROM (SELECT *, {rule_sql()} AS rule FROM events_in_context) "
        f"WHERE rule IS NOT NULL OR _row % {int(stride)} = 0"
    )
    con.execute("CREATE TEMP VIEW flagged AS SELECT * FROM checked WHERE rule IS NOT NULL")
    con.execute("SET VARIABLE pmg_flagged = NULL")
    if extracted and con.execute("SELECT count(*) FROM flagged").fetchall()[0][0]:
        con.execute(
            f"SET VARIABLE pmg_flagged = (SELECT bitstring_agg(_row, 0, {int(extracted) - 1}) FROM flagged)"
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


def _valid_copy(path, in_order: bool) -> str:
    """COPY of the valid rows: the input minus the flagged bitmap, in file order when the file is in
    (event_ts, event_id) order already, else sorted."""
    columns = ", ".join(nullable_column(c, c) for c in EVENT_COLUMNS)
    order = "" if in_order else " ORDER BY event_ts, event_id, _row"
    return (
        f"COPY (SELECT {columns} FROM events WHERE NOT {_bit('pmg_flagged', '_row')}{order}) "
        f"TO {sql_string(str(path))} ({PARQUET_COPY_OPTIONS})"
    )


# Every column breaks ties, so copies of one event in another input order still come out the same.
_QUARANTINE_ORDER = (
    "event_ts",
    "event_id",
    "user_id",
    "item_id",
    "session_id",
    "event_type",
    "dwell_seconds",
)


def _quarantine_copy(path) -> str:
    columns = ", ".join(nullable_column(c, c) for c in EVENT_COLUMNS)
    return (
        f"COPY (SELECT {columns}, {nullable_column('rule', 'rule')}, "
        f"{nullable_column(reason_sql(rule_column='rule'), 'reason')} "
        "FROM flagged "
        f"ORDER BY {', '.join(c + ' NULLS LAST' for c in _QUARANTINE_ORDER)}, _row) "
        f"TO {sql_string(str(path))} ({PARQUET_COPY_OPTIONS})"
    )


def _check_conservation(extracted: int, valid: int, quarantined: int, by_rule: dict[str, int]) -> None:
    if extracted != valid + quarantined or sum(by_rule.values()) != quarantined:
        raise RuntimeError(
            f"validation lost or invented rows: extracted {extracted} != valid {valid} + quarantined "
            f"{quarantined} (rule counts sum to {sum(by_rule.values())}); nothing was published"
        )


def _gx_stride(extracted: int, max_rows: int) -> int:
    """Every how many rows (in file order) GX looks at one: 1 up to `max_rows` events."""
    return 1 if extracted <= max_rows else math.ceil(extracted / max(max_rows, 1))


def _use_gx_worker(extracted: int) -> bool:
    """A worker pays off for big windows, while this process has not imported GX itself, and when a CPU
    is idle: on a busy machine a second interpreter only adds work (about 2 s of imports of its own).
    Either way the report is the same."""
    if extracted < GX_WORKER_MIN_ROWS or "great_expectations" in sys.modules:
        return False
    try:
        idle = (os.cpu_count() or 1) - os.getloadavg()[0]
    except OSError:  # no load average on this platform
        return True
    return idle >= 0.75


def _gx_sample_sql(stride: int) -> str:
    return f"SELECT {', '.join(EVENT_COLUMNS)} FROM checked WHERE _row % {int(stride)} = 0 ORDER BY _row"


def _gx_scope(rows: int, extracted: int, stride: int) -> dict:
    sampled = stride > 1
    return {
        "rows": rows,
        "of_rows": extracted,
        "sampled": sampled,
        "sample_every": stride,
        "columns": list(EVENT_COLUMNS),
        "description": (
            f"a sample of {rows:,} of {extracted:,} events (every {stride}th row in file order)"
            if sampled
            else f"all {extracted:,} events"
        ),
    }


def _great_expectations(
    con: duckdb.DuckDBPyConnection,
    worker: GxWorker | None,
    spill: str,
    extracted: int,
    stride: int,
    window_start: datetime,
    window_end: datetime,
) -> dict:
    """The GX report over the events, or every `stride`-th of them (in file order), from `checked`: by the
    worker when there is one (falling back to this process if it fails), else here."""
    if worker is not None:
        sample = os.path.join(spill, "gx_sample.parquet")
        rows = con.execute(
            f"COPY ({_gx_sample_sql(stride)}) TO {sql_string(sample)} (FORMAT parquet)"
        ).fetchall()[0][0]
        scope = _gx_scope(int(rows), extracted, stride)
        try:
            return worker.run(sample, window_start=window_start, window_end=window_end, scope=scope)
        except Exception:
            log.warning("the GX worker failed; running the suite in this process", exc_info=True)
    frame = con.sql(_gx_sample_sql(stride)).to_arrow_table().cast(events_schema()).to_pandas()
    return run_suite(
        frame,
        window_start=window_start,
        window_end=window_end,
        scope=_gx_scope(len(frame), extracted, stride),
    )


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
    exempt: int = 0,
) -> str:
    failing = sorted(
        ((n, c) for n, c in by_rule.items() if c), key=lambda nc: (-nc[1], RULE_NAMES.index(nc[0]))
    )
    shown, shown_limit = _percents(bad_fraction, limit)
    counts = ", ".join(f"{name}={count:,}" for name, count in failing)
    redelivered = (
        f" ({exempt:,} exact copies of other events, also quarantined, are not counted)" if exempt else ""
    )
    return (
        f"{shown} of {extracted:,} events failed validation (max {shown_limit}): {counts}{redelivered}; "
        f"see {quarantine_key} (rows with rule and reason) and {report_key}"
    )
