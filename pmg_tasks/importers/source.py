"""Reading import files with DuckDB: CSV and Parquet in, the warehouse's columns out.

DuckDB does the heavy lifting whatever the warehouse is: it reads the file in parallel, streaming, and
maps it to the warehouse's columns in SQL. For a DuckDB warehouse that happens inside the warehouse's own
connection, so rows never leave the engine; for PostgreSQL it happens in a private in-memory DuckDB whose
result streams out in Arrow batches (staging.py).

Paths and mapped values are bound as parameters; column names from a mapping are quoted identifiers. No
value read from a file is ever formatted into SQL.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pmg_tasks.importers import staging
from pmg_tasks.warehouse import Warehouse, quote_identifier

if TYPE_CHECKING:
    import duckdb

BATCH_ROWS = 100_000
# Temporary tables an import creates on the connection it works on (dropped at the end).
SCRATCH_TABLES = ("import_mapped", "import_type_map")


class ImportDataError(ValueError):
    """The file cannot be imported as asked (a missing column or file, an unknown format)."""


@contextlib.contextmanager
def working_connection(
    warehouse: Warehouse, memory_limit: str = "2GB"
) -> Iterator[duckdb.DuckDBPyConnection]:
    """The DuckDB connection to read and map files on: the warehouse's own, or a private in-memory one."""
    import duckdb

    if warehouse.is_duckdb:
        con = warehouse.duckdb
        try:
            yield con
        finally:
            for table in SCRATCH_TABLES:
                con.execute(f"DROP TABLE IF EXISTS {table}").fetchall()
        return
    with tempfile.TemporaryDirectory(prefix="pmg-import-") as spill:
        con = duckdb.connect(config={"memory_limit": memory_limit or "2GB", "temp_directory": spill})
        try:
            yield con
        finally:
            con.close()


def file_format(path: Path, declared: str | None = None) -> str:
    """'csv' or 'parquet', from `declared` or the file name."""
    if declared:
        if declared.lower() not in {"csv", "parquet"}:
            raise ImportDataError(f"unknown file format {declared!r}: use csv or parquet")
        return declared.lower()
    suffixes = [s.lower() for s in path.suffixes]
    if ".parquet" in suffixes or ".pq" in suffixes:
        return "parquet"
    if ".csv" in suffixes or ".tsv" in suffixes or ".txt" in suffixes:
        return "csv"
    raise ImportDataError(f"cannot tell the format of {path.name} from its name: pass csv or parquet")


def read_sql(
    fmt: str, *, delimiter: str | None = None, encoding: str | None = None, columns: dict | None = None
) -> str:
    """A table function over the file at parameter $path. CSV is read as text (all_varchar), so ids keep
    their leading zeros and timestamps their spelling; typing happens in the mapping."""
    if fmt == "parquet":
        return "read_parquet($path)"
    options = ["header = true"]
    if columns is not None:
        options.append("columns = $columns")
    else:
        options.append("all_varchar = true")
    if delimiter is not None:
        options.append("delim = $delimiter")
    if encoding is not None:
        options.append("encoding = $encoding")
    return f"read_csv($path, {', '.join(options)})"


def read_params(
    path: Path, *, delimiter: str | None = None, encoding: str | None = None, columns: dict | None = None
) -> dict:
    params: dict = {"path": str(path)}
    if delimiter is not None:
        params["delimiter"] = delimiter
    if encoding is not None:
        params["encoding"] = encoding
    if columns is not None:
        params["columns"] = columns
    return params


def describe(con: duckdb.DuckDBPyConnection, from_sql: str, params: dict) -> dict[str, str]:
    """Column name -> DuckDB type of the file."""
    return {row[0]: row[1] for row in con.execute(f"DESCRIBE SELECT * FROM {from_sql}", params).fetchall()}


def column(name: str) -> str:
    return quote_identifier(name)


def timestamp_sql(expression: str, duck_type: str, unit: str) -> str:
    """SQL: a naive UTC TIMESTAMP from a column of any type. Numbers are epoch `unit`s (s, ms, us);
    text is an epoch number or an ISO-8601 timestamp, converted to UTC when it carries an offset and taken
    as UTC when it does not. Whatever cannot be read is NULL (the importer counts and rejects those rows)."""
    per_unit = {"s": 1_000_000, "ms": 1_000, "us": 1}
    if unit not in per_unit:
        raise ImportDataError(f"unknown timestamp unit {unit!r}: use s, ms or us")
    factor = per_unit[unit]
    # Epoch values outside years ~1 to ~9999 are not timestamps.
    limit = 2.5e17 / factor

    def from_epoch(number: str) -> str:
        return f"CASE WHEN abs({number}) < {limit} THEN make_timestamp(CAST(round({number} * {factor}) AS BIGINT)) END"

    upper = duck_type.upper()
    if upper.startswith("TIMESTAMP WITH TIME ZONE"):
        return f"timezone('UTC', {expression})"
    if upper.startswith("TIMESTAMP") or upper == "DATE":
        return f"CAST({expression} AS TIMESTAMP)"
    if upper in {
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "FLOAT",
        "DOUBLE",
    } or upper.startswith("DECIMAL"):
        return from_epoch(f"CAST({expression} AS DOUBLE)")
    text = f"trim(CAST({expression} AS VARCHAR))"
    return (
        f"CASE WHEN regexp_full_match({text}, '-?[0-9]+(\\.[0-9]+)?') THEN {from_epoch(f'CAST({text} AS DOUBLE)')} "
        f"WHEN regexp_matches({text}, '[0-9]:[0-9][0-9](:[0-9][0-9](\\.[0-9]+)?)? *(Z|[+-][0-9][0-9](:?[0-9][0-9])?)$') "
        f"THEN timezone('UTC', TRY_CAST({text} AS TIMESTAMPTZ)) "
        f"ELSE TRY_CAST({text} AS TIMESTAMP) END"
    )


def transfer(warehouse: Warehouse, con: duckdb.DuckDBPyConnection, table: str, sql: str) -> int:
    """Load the rows of `sql` (a query on `con`) into the warehouse `table`; returns rows written."""
    if warehouse.is_duckdb:
        return staging.load(warehouse, table, duckdb_sql=sql)
    return staging.load(warehouse, table, batches=con.sql(sql).to_arrow_reader(BATCH_ROWS))
