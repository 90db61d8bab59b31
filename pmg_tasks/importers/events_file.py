"""Import a clickstream file (CSV, Parquet or JSON Lines) into the warehouse's events table, through a column mapping.

    pmg import events clicks.csv --map event_id=id,user_id=uid,item_id=sku,event_type=action,event_ts=time \
        --types view=pageview,add_to_cart=basket --ts-unit ms

- `--map TARGET=SOURCE,...` names the file's column for each events column. A column the file already
  calls by the events name needs no mapping. Required: user_id, item_id, event_type, event_ts. Optional:
  session_id, dwell_seconds and event_id; without an event_id, each event gets a stable id made from its
  content (`ev-` + md5), so importing the file again adds nothing.
- `--types TARGET=SOURCE,...` maps the file's event type values to pmg's (view, click, add_to_cart,
  purchase); several sources may map to one target. Values not mapped are imported as they are, and
  validation quarantines the ones it does not know, with the reason.
- event_ts: epoch numbers in `--ts-unit` (s, ms, us), or ISO-8601 text (converted to UTC when it carries
  an offset, taken as UTC when it does not), or a Parquet timestamp.

Bytes that are not UTF-8 become U+FFFD and are counted per column (`invalid_utf8_replaced`): the row
goes in, and validation judges what is left of it.

Rows that can never be used are not imported, and are counted with examples in the result: an event_ts
that cannot be read (no extraction window would ever contain it) and a mapped event_id that is empty
(re-imports could not recognise it). Everything else goes in as it is; judging it is validation's job.

Idempotent: events whose event_id is already in the warehouse are skipped (sql/import_events.sql).
Users seen for the first time are added to the users table (created_at: their first event).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from pmg_tasks.importers.source import (
    ImportDataError,
    column,
    count_replaced,
    describe,
    file_format,
    lenient_text,
    parse_pairs,
    read_params,
    read_sql,
    readable_file,
    replaced_text,
    timestamp_sql,
    transfer,
    working_connection,
)
from pmg_tasks.validation.rules import EVENT_TYPES
from pmg_tasks.warehouse import EVENT_COLUMNS, Warehouse

log = logging.getLogger(__name__)

REQUIRED = ("user_id", "item_id", "event_type", "event_ts")
EXAMPLES = 5


def parse_mapping(spec: str | Iterable[str] | dict[str, str] | None) -> dict[str, str]:
    """events column -> file column, from 'event_id=id,user_id=uid,...' (or a dict, checked)."""
    mapping: dict[str, str] = {}
    pairs = list(spec.items()) if isinstance(spec, dict) else parse_pairs(spec, "--map")
    for target, source in pairs:
        if target not in EVENT_COLUMNS:
            raise ImportDataError(
                f"--map names {target!r}, which is not an events column ({', '.join(EVENT_COLUMNS)})"
            )
        if target in mapping:
            raise ImportDataError(f"--map names {target!r} twice")
        mapping[target] = source
    return mapping


def parse_type_mapping(spec: str | Iterable[str] | Iterable[tuple[str, str]] | None) -> list[tuple[str, str]]:
    """[(pmg event type, file value), ...] from 'view=pageview,view=impression,purchase=buy' (or pairs)."""
    spec = list(spec) if spec is not None and not isinstance(spec, str) else spec
    if spec and all(isinstance(p, tuple) for p in spec):
        pairs = [(str(t), str(s)) for t, s in spec]
    else:
        pairs = parse_pairs(spec, "--types")
    for target, _ in pairs:
        if target not in EVENT_TYPES:
            raise ImportDataError(
                f"--types maps to {target!r}, which is not an event type ({', '.join(EVENT_TYPES)})"
            )
    sources = [source for _, source in pairs]
    repeated = sorted({s for s in sources if sources.count(s) > 1})
    if repeated:
        raise ImportDataError(f"--types maps the value(s) {repeated} to more than one event type")
    return pairs


def import_events_file(
    warehouse: Warehouse,
    path: str | Path,
    mapping: dict[str, str] | str | None = None,
    event_types: list[tuple[str, str]] | str | None = None,
    *,
    ts_unit: str = "s",
    fmt: str | None = None,
    delimiter: str | None = None,
    encoding: str | None = None,
    memory_limit: str = "2GB",
) -> dict:
    """Import the events of a CSV or Parquet file; returns counts (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ImportDataError(f"no file {path}")
    mapping = parse_mapping(mapping)
    event_types = parse_type_mapping(event_types)
    fmt = file_format(path, fmt)
    warehouse.apply_ddl()

    with working_connection(warehouse, memory_limit) as con, readable_file(path, fmt, encoding) as (readable, recoded):
        from_sql = read_sql(fmt, delimiter=delimiter)
        params = read_params(readable, delimiter=delimiter)
        found = describe(con, from_sql, params)
        sources = _resolve(mapping, found, path)
        raw = {s: lenient_text(con, f"src.{column(s)}", found[s]) for s in sources.values() if s is not None}
        lenient = recoded or any(found[s].upper() == "BLOB" for s in raw)
        replaced = count_replaced(con, from_sql, params, raw) if lenient else {}
        text_of = {s: replaced_text(r) if lenient else r for s, r in raw.items()}

        con.execute(
            "CREATE OR REPLACE TEMP TABLE import_type_map (source VARCHAR, target VARCHAR)"
        ).fetchall()
        if event_types:
            con.executemany("INSERT INTO import_type_map VALUES (?, ?)", [[s, t] for t, s in event_types])
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE import_mapped AS {_mapped_sql(from_sql, sources, text_of, found, ts_unit)}",
            params,
        ).fetchall()

        counts = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE event_ts IS NULL), "
            "count(*) FILTER (WHERE event_ts IS NOT NULL AND event_id IS NULL), "
            "count(*) FILTER (WHERE dwell_seconds IS NULL AND trim(_source_dwell) <> '') FROM import_mapped"
        ).fetchall()[0]
        rows, bad_ts, bad_id, bad_dwell = (int(c) for c in counts)
        examples = con.execute(
            f"SELECT _source_ts FROM import_mapped WHERE event_ts IS NULL LIMIT {EXAMPLES}"
        ).fetchall()
        usable = "event_ts IS NOT NULL AND event_id IS NOT NULL"
        inserted = transfer(
            warehouse, con, "events", f"SELECT {', '.join(EVENT_COLUMNS)} FROM import_mapped WHERE {usable}"
        )
        users = transfer(
            warehouse,
            con,
            "users",
            "SELECT user_id, min(event_ts) AS created_at, CAST(NULL AS VARCHAR) AS country "
            f"FROM import_mapped WHERE {usable} AND user_id IS NOT NULL GROUP BY user_id",
        )

    result = {
        "file": str(path),
        "rows": rows,
        "rejected": {"event_ts_unreadable": bad_ts, "event_id_missing": bad_id},
        "rejected_event_ts_examples": [r[0] for r in examples],
        "dwell_unreadable_imported_as_null": bad_dwell,
        "invalid_utf8_replaced": replaced,
        "events_inserted": inserted,
        "events_already_present": rows - bad_ts - bad_id - inserted,
        "users_added": users,
        "mapping": sources,
    }
    for name, count in replaced.items():
        log.warning("%s: column %s held bytes that are not UTF-8 in %d rows; each became U+FFFD", path, name, count)
    if bad_ts or bad_id:
        log.warning(
            "%s: %d rows not imported (%d with an unreadable event_ts, e.g. %s; %d without an event_id)",
            path,
            bad_ts + bad_id,
            bad_ts,
            result["rejected_event_ts_examples"],
            bad_id,
        )
    log.info(
        "%s: %d rows, %d events inserted, %d already present",
        path,
        rows,
        inserted,
        result["events_already_present"],
    )
    return result


def _resolve(mapping: dict[str, str], found: dict[str, str], path: Path) -> dict[str, str | None]:
    """events column -> file column (None: not in the file), with errors that name what is missing."""
    sources: dict[str, str | None] = {}
    missing = []
    for target in EVENT_COLUMNS:
        source = mapping.get(target)
        if source is not None and source not in found:
            raise ImportDataError(
                f"column {source!r} (mapped to {target}) is not in {path.name}; its columns are: "
                + ", ".join(found)
            )
        if source is None and target in found:
            source = target
        if source is None and target in REQUIRED:
            missing.append(target)
        sources[target] = source
    if missing:
        raise ImportDataError(
            f"{path.name} has no column for {', '.join(missing)}: map one with --map "
            + ",".join(f"{m}=COLUMN" for m in missing)
            + f" (its columns are: {', '.join(found)})"
        )
    return sources


def _mapped_sql(
    from_sql: str, sources: dict[str, str | None], text_of: dict[str, str], found: dict[str, str], ts_unit: str
) -> str:
    """SQL: the file's rows as events columns, plus the raw event_ts and dwell text for the report.
    `text_of` maps a file column to its (leniently decoded) text expression."""

    def text(target: str) -> str:
        source = sources[target]
        return "CAST(NULL AS VARCHAR)" if source is None else text_of[source]

    ts_source = sources["event_ts"]
    event_ts = timestamp_sql(f"src.{column(ts_source)}", found[ts_source], ts_unit)
    dwell = (
        "CAST(NULL AS DOUBLE)"
        if sources["dwell_seconds"] is None
        else (f"TRY_CAST(src.{column(sources['dwell_seconds'])} AS DOUBLE)")
    )
    if sources["event_id"] is None:
        # A stable id from the event's content: re-importing the file recognises the same events.
        parts = ", ".join(
            f"coalesce({c}, chr(0))"
            for c in ("user_id", "item_id", "session_id", "event_type", "CAST(event_ts AS VARCHAR)")
        )
        event_id = f"'ev-' || md5(concat_ws(chr(31), {parts}))"
    else:
        event_id = "CASE WHEN trim(_source_id) = '' THEN NULL ELSE _source_id END"
    return f"""
        SELECT {event_id} AS event_id, user_id, item_id, session_id, event_type, event_ts, dwell_seconds,
               _source_ts, _source_dwell
        FROM (
            SELECT {text("event_id")} AS _source_id, {text("user_id")} AS user_id, {text("item_id")} AS item_id,
                   {text("session_id")} AS session_id, coalesce(m.target, {text("event_type")}) AS event_type,
                   {event_ts} AS event_ts, {dwell} AS dwell_seconds,
                   CAST(src.{column(ts_source)} AS VARCHAR) AS _source_ts, {text("dwell_seconds")} AS _source_dwell
            FROM {from_sql} AS src
            LEFT JOIN import_type_map m ON m.source = {text("event_type")}
        ) AS mapped
    """
