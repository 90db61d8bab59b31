"""Reading import files with DuckDB: CSV, JSON Lines and Parquet in, the warehouse's columns out.

DuckDB does the heavy lifting whatever the warehouse is: it reads the file in parallel, streaming, and
maps it to the warehouse's columns in SQL. For a DuckDB warehouse that happens inside the warehouse's own
connection, so rows never leave the engine; for PostgreSQL it happens in a private in-memory DuckDB whose
result streams out in Arrow batches (staging.py).

Paths and mapped values are bound as parameters; column names from a mapping are quoted identifiers. No
value read from a file is ever formatted into SQL.

Bytes are read leniently: DuckDB refuses a text file with one byte that is not UTF-8, so a file that has
any (or that is in another encoding, `--encoding`) is first re-encoded to UTF-8 in a scratch file, one
chunk at a time, each undecodable sequence becoming a marker (`UNDECODABLE`). The mapping then counts the
markers per column and turns each into U+FFFD, so the count is exact and nothing else in the file changes.
Binary (BLOB) columns of a Parquet file are decoded the same way.
"""

from __future__ import annotations

import codecs
import contextlib
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pmg_tasks.importers import staging
from pmg_tasks.warehouse import Warehouse, quote_identifier

if TYPE_CHECKING:
    import duckdb

BATCH_ROWS = 100_000
# Temporary tables an import creates on the connection it works on (dropped at the end).
SCRATCH_TABLES = ("import_mapped", "import_type_map", "import_items_read")
FORMATS = ("csv", "parquet", "jsonl")
# Stands for an undecodable byte sequence between re-encoding and mapping: a Unicode noncharacter, which
# text meant for interchange never holds, so counting it counts exactly the replaced sequences.
UNDECODABLE = "\ufdd0"
REPLACEMENT = "\ufffd"
_CHUNK_BYTES = 1 << 20
LENIENT_UTF8_FUNCTION = "pmg_lenient_utf8"


def _mark_undecodable(error: UnicodeDecodeError) -> tuple[str, int]:
    return UNDECODABLE, error.end


codecs.register_error("pmg-undecodable", _mark_undecodable)


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


def parse_pairs(spec: str | Iterable[str] | None, what: str) -> list[tuple[str, str]]:
    """[(target, source), ...] from 'a=x,b=y' (or several such strings)."""
    if spec is None:
        return []
    parts: list[str] = []
    for chunk in [spec] if isinstance(spec, str) else spec:
        parts += [p.strip() for p in chunk.split(",") if p.strip()]
    pairs = []
    for part in parts:
        target, sep, source = part.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise ImportDataError(f"{what} entry {part!r} is not TARGET=SOURCE")
        pairs.append((target.strip(), source.strip()))
    return pairs


def file_format(path: Path, declared: str | None = None) -> str:
    """'csv', 'parquet' or 'jsonl', from `declared` or the file name."""
    if declared:
        if declared.lower() not in FORMATS:
            raise ImportDataError(f"unknown file format {declared!r}: use {', '.join(FORMATS)}")
        return declared.lower()
    suffixes = [s.lower() for s in path.suffixes]
    if ".parquet" in suffixes or ".pq" in suffixes:
        return "parquet"
    if ".csv" in suffixes or ".tsv" in suffixes or ".txt" in suffixes:
        return "csv"
    if {".jsonl", ".ndjson", ".json"} & set(suffixes):
        return "jsonl"
    raise ImportDataError(f"cannot tell the format of {path.name} from its name: pass {', '.join(FORMATS)}")


@contextlib.contextmanager
def readable_file(path: Path, fmt: str, encoding: str | None = None) -> Iterator[tuple[Path, bool]]:
    """(a path DuckDB can read, whether text in it may hold UNDECODABLE markers).

    A text file (CSV, JSON Lines) that is valid UTF-8 is read in place. Otherwise, or when `encoding`
    names another encoding, it is re-encoded to UTF-8 in a scratch file first (see the module docstring).
    Parquet is read in place: its binary columns are decoded by `lenient_text`.
    """
    if fmt == "parquet":
        yield path, False
        return
    name = encoding or "utf-8"
    try:
        codec = codecs.lookup(name)
    except LookupError:
        raise ImportDataError(f"unknown encoding {name!r}: use a Python codec name such as utf-8 or cp1252") from None
    utf8 = codec.name == "utf-8"
    if utf8 and _is_utf8(path):
        yield path, False
        return
    decoder = codecs.getincrementaldecoder("utf-8-sig" if utf8 else codec.name)(errors="pmg-undecodable")
    with tempfile.TemporaryDirectory(prefix="pmg-import-text-") as scratch:
        copy = Path(scratch) / f"{path.stem}.utf8{path.suffix}"
        with open(path, "rb") as source, open(copy, "w", encoding="utf-8", newline="") as target:
            while chunk := source.read(_CHUNK_BYTES):
                target.write(decoder.decode(chunk))
            target.write(decoder.decode(b"", final=True))
        yield copy, True


def _is_utf8(path: Path) -> bool:
    """Whether the whole file decodes as UTF-8 (streamed: memory holds one chunk)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as source:
            while chunk := source.read(_CHUNK_BYTES):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def lenient_text(con: duckdb.DuckDBPyConnection, expression: str, duck_type: str) -> str:
    """SQL: a column as text that may hold UNDECODABLE markers (a BLOB is decoded leniently)."""
    if duck_type.upper() == "BLOB":
        _register_lenient_utf8(con)
        return f"{LENIENT_UTF8_FUNCTION}({expression})"
    if duck_type.upper() == "JSON":
        # A JSON Lines column of mixed types: a string as its text, anything else as its JSON.
        return f"json_extract_string({expression}, '$')"
    return f"CAST({expression} AS VARCHAR)"


def replaced_text(raw: str) -> str:
    """SQL: lenient text with each UNDECODABLE marker turned into U+FFFD."""
    return f"replace({raw}, chr({ord(UNDECODABLE)}), chr({ord(REPLACEMENT)}))"


def count_replaced(
    con: duckdb.DuckDBPyConnection, from_sql: str, params: dict, raw_columns: dict[str, str]
) -> dict[str, int]:
    """Per column name, the rows whose text held an undecodable sequence (one pass over the file).
    `raw_columns` maps a column name to its lenient_text expression over `src`."""
    if not raw_columns:
        return {}
    counts = ", ".join(
        f"count(*) FILTER (WHERE contains({raw}, chr({ord(UNDECODABLE)})))" for raw in raw_columns.values()
    )
    row = con.execute(f"SELECT {counts} FROM {from_sql} AS src", params).fetchall()[0]
    return {name: int(n) for name, n in zip(raw_columns, row, strict=True) if n}


def _register_lenient_utf8(con: duckdb.DuckDBPyConnection) -> None:
    registered = con.execute(
        "SELECT count(*) FROM duckdb_functions() WHERE function_name = ?", [LENIENT_UTF8_FUNCTION]
    ).fetchall()[0][0]
    if not registered:
        con.create_function(
            LENIENT_UTF8_FUNCTION, _decode_leniently, ["BLOB"], "VARCHAR", side_effects=False
        )


def _decode_leniently(value: bytes) -> str:
    return value.decode("utf-8", errors="pmg-undecodable")


def read_sql(
    fmt: str, *, delimiter: str | None = None, encoding: str | None = None, columns: dict | None = None
) -> str:
    """A table function over the file at parameter $path. CSV is read as text (all_varchar), so ids keep
    their leading zeros and timestamps their spelling; typing happens in the mapping. JSON Lines keep
    their JSON types (a list stays a list). A file that went through `readable_file` is UTF-8 already:
    pass no encoding for it."""
    if fmt == "parquet":
        return "read_parquet($path)"
    if fmt == "jsonl":
        return "read_json($path, format = 'newline_delimited')"
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
