"""The warehouse: an embedded DuckDB file by default, any SQLAlchemy database (PostgreSQL) in production.

Queries live in `sql/` and take named parameters (`:window_start`); values are always bound, never
formatted into SQL text. Results stream out in Arrow record batches (PostgreSQL: a server-side cursor)
or, on DuckDB, straight from the engine into a Parquet file, so memory stays bounded whatever a window
holds. See docs/warehouse.md.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from pmg_tasks.settings import Settings

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

# How pmg's own Parquet files are written by DuckDB (extract and validate). Version 2 pages with delta
# encodings, no dictionaries and zstd level 1: about half the CPU of DuckDB's defaults for clickstream
# columns (ids are mostly unique, so dictionaries are built and thrown away; level 1 compresses these
# columns as well as the default level 3) and smaller files; pyarrow, pandas and Spark read them. Row groups
# have a fixed size, so equal rows make equal bytes.
PARQUET_ROW_GROUP_ROWS = 262_144
PARQUET_COPY_OPTIONS = (
    "FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, PARQUET_VERSION v2, DICTIONARY_SIZE_LIMIT 1, "
    f"ROW_GROUP_SIZE {PARQUET_ROW_GROUP_ROWS}"
)
# The tables a caller may name (identifiers cannot be bound, so they are checked against this).
TABLES = ("events", "items", "users")

# The Arrow shape of what extraction writes, whichever engine produced it.
EVENT_COLUMNS = ("event_id", "user_id", "item_id", "session_id", "event_type", "event_ts", "dwell_seconds")
ITEM_COLUMNS = ("item_id", "title", "categories", "description", "attributes", "image_uri", "updated_at")
USER_COLUMNS = ("user_id", "created_at", "country")


def events_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("event_id", pa.string()),
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("session_id", pa.string()),
            ("event_type", pa.string()),
            ("event_ts", pa.timestamp("us")),
            ("dwell_seconds", pa.float64()),
        ]
    )


def items_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("item_id", pa.string()),
            ("title", pa.string()),
            ("categories", pa.string()),
            ("description", pa.string()),
            ("attributes", pa.string()),
            ("image_uri", pa.string()),
            ("updated_at", pa.timestamp("us")),
        ]
    )


def users_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("user_id", pa.string()), ("created_at", pa.timestamp("us")), ("country", pa.string())])


def load_sql(name: str) -> str:
    return (SQL_DIR / name).read_text()


def _split_statements(script: str) -> list[str]:
    without_comments = re.sub(r"--[^\n]*", "", script)
    return [s.strip() for s in without_comments.split(";") if s.strip()]


class Warehouse:
    """One connection to the warehouse. Use as a context manager.

    `memory_limit` caps DuckDB's working memory (sorts and joins beyond it spill next to the file).
    """

    def __init__(self, url: str, memory_limit: str = ""):
        self.url = url
        self.is_duckdb = url.startswith("duckdb://")
        if self.is_duckdb:
            import duckdb

            path = url[len("duckdb:///") :] or ":memory:"
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            config = {"preserve_insertion_order": True}
            if memory_limit:
                config["memory_limit"] = memory_limit
            self._duck = duckdb.connect(path, config=config)
        else:
            import sqlalchemy

            self._engine = sqlalchemy.create_engine(url)

    @property
    def duckdb(self):
        """The DuckDB connection (DuckDB warehouses only): for engine-native bulk work such as importers."""
        if not self.is_duckdb:
            raise TypeError(f"{_safe_url(self.url)} is not a DuckDB warehouse")
        return self._duck

    @property
    def engine(self):
        """The SQLAlchemy engine (non-DuckDB warehouses only)."""
        if self.is_duckdb:
            raise TypeError(f"{_safe_url(self.url)} is a DuckDB warehouse; it has no SQLAlchemy engine")
        return self._engine

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages."""
        return _safe_url(self.url)

    @property
    def dialect(self) -> str:
        """'duckdb', 'postgresql', ...: what a caller needs to pick engine-specific statements."""
        return "duckdb" if self.is_duckdb else self._engine.dialect.name

    # -- lifecycle -----------------------------------------------------------------------------------
    def close(self) -> None:
        if self.is_duckdb:
            self._duck.close()
        else:
            self._engine.dispose()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- statements ----------------------------------------------------------------------------------
    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        if self.is_duckdb:
            # Fetch to the end: DuckDB 2 refuses new work on a connection with an unfinished result.
            self._duck.execute(_duck_params(sql), dict(params or {})).fetchall()
        else:
            import sqlalchemy

            with self._engine.begin() as conn:
                conn.execute(sqlalchemy.text(sql), dict(params or {}))

    def apply_ddl(self) -> None:
        """Create the tables (sql/ddl.sql) and, outside DuckDB, their indexes (sql/indexes.sql).

        DuckDB needs no index: its row groups carry min/max per column, so a window on event_ts skips
        what it does not need, and an ART index would only slow every insert down.
        """
        for statement in _split_statements(load_sql("ddl.sql")):
            self.execute(statement)
        if not self.is_duckdb:
            for statement in _split_statements(load_sql("indexes.sql")):
                self.execute(statement)

    def has_table(self, name: str) -> bool:
        """Whether a table of that name exists in the schema this connection works in."""
        rows = self.fetch_rows(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = :name "
            "AND table_schema = current_schema()",
            {"name": name},
        )
        return bool(rows[0][0])

    def fetch_rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        """All rows of `sql` as tuples (for small results)."""
        if self.is_duckdb:
            return self._duck.execute(_duck_params(sql), dict(params or {})).fetchall()
        import sqlalchemy

        with self._engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sqlalchemy.text(sql), dict(params or {}))]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """DuckDB: run the block in one read transaction, so its statements see the same table state."""
        if not self.is_duckdb:
            yield
            return
        self._duck.execute("BEGIN TRANSACTION").fetchall()
        try:
            yield
        except BaseException:
            self._duck.execute("ROLLBACK").fetchall()
            raise
        self._duck.execute("COMMIT").fetchall()

    def fetch_frame(self, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        if self.is_duckdb:
            return self._duck.execute(_duck_params(sql), dict(params or {})).df()
        import pandas as pd
        import sqlalchemy

        with self._engine.connect() as conn:
            return pd.read_sql(sqlalchemy.text(sql), conn, params=dict(params or {}))

    def stream(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        chunk_rows: int = 500_000,
        schema: pa.Schema | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Rows of `sql` as Arrow record batches of at most `chunk_rows`.

        With `schema`, every batch has exactly that schema (columns selected by name and cast), whatever
        the engine returned: an all-null column is still a string column, a NUMERIC is a double.
        PostgreSQL rows come through a server-side cursor, `chunk_rows` at a time.
        """
        import pyarrow as pa

        if self.is_duckdb:
            # A relation streams straight into Arrow; execute() would copy every row once more.
            relation = self._duck.sql(_duck_params(sql), params=dict(params or {}))
            for batch in relation.to_arrow_reader(chunk_rows):
                if schema is None:
                    yield batch
                else:
                    yield from pa.Table.from_batches([batch]).select(schema.names).cast(schema).to_batches()
            return
        for names, rows in self.stream_rows(sql, params, chunk_rows):
            columns = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
            if schema is None:
                yield pa.RecordBatch.from_arrays([pa.array(c) for c in columns], names=names)
                continue
            by_name = dict(zip(names, columns, strict=True))
            missing = [f.name for f in schema if f.name not in by_name]
            if missing:
                raise ValueError(f"the query returned no column {missing}; it returned {names}")
            arrays = [_typed_array(by_name[f.name], f.type) for f in schema]
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    def stream_rows(
        self, sql: str, params: Mapping[str, Any] | None = None, chunk_rows: int = 10_000
    ) -> Iterator[tuple[list[str], list[tuple]]]:
        """(column names, rows) chunks of `sql`, values as the driver returns them (str, bytes, ...)."""
        if self.is_duckdb:
            result = self._duck.execute(_duck_params(sql), dict(params or {}))
            names = [d[0] for d in result.description]
            while rows := result.fetchmany(chunk_rows):
                yield names, rows
            return
        import sqlalchemy

        with self._engine.connect() as conn:
            # stream_results: psycopg2 runs the query in a named (server-side) cursor and fetches
            # chunk_rows at a time, so client memory holds one chunk, not the result.
            result = conn.execute(
                sqlalchemy.text(sql),
                dict(params or {}),
                execution_options={"stream_results": True, "yield_per": chunk_rows},
            )
            names = list(result.keys())
            # The size is explicit: without it, partitions() may fetch the whole result at once.
            for rows in result.partitions(chunk_rows):
                yield names, [tuple(r) for r in rows]

    def copy_to_parquet(
        self, sql: str, params: Mapping[str, Any] | None, path: str | Path, schema: pa.Schema
    ) -> int:
        """DuckDB only: write the rows of `sql` to a Parquet file at `path` inside the engine, with
        exactly `schema` (columns by name, cast, all nullable) and PARQUET_COPY_OPTIONS. Returns rows.

        The rows never pass through Python, which is what makes a ten-million-row window take seconds.
        Order is kept: the outer select only projects.
        """
        if not self.is_duckdb:
            raise TypeError("copy_to_parquet needs a DuckDB warehouse; use stream() elsewhere")
        relation = self._duck.sql(_duck_params(sql), params=dict(params or {}))
        found = dict(zip(relation.columns, relation.types, strict=True))
        missing = [f.name for f in schema if f.name not in found]
        if missing:
            raise ValueError(f"the query returned no column {missing}; it returned {relation.columns}")
        columns = ", ".join(
            nullable_column(_duck_cast(quote_identifier(f.name), str(found[f.name]), f.type), f.name)
            for f in schema
        )
        copy = (
            f"COPY (SELECT {columns} FROM (\n{_duck_params(sql)}\n) AS extracted) "
            f"TO {_sql_literal(str(path))} ({PARQUET_COPY_OPTIONS})"
        )
        return int(self._duck.execute(copy, dict(params or {})).fetchall()[0][0])

    def insert_frame(self, table: str, frame: pd.DataFrame) -> int:
        """Append rows; `table` must be one of ours (it is an identifier, so it is checked, not bound)."""
        if table not in TABLES:
            raise ValueError(f"unknown warehouse table {table!r}")
        if frame.empty:
            return 0
        if self.is_duckdb:
            self._duck.register("incoming_frame", frame)
            columns = ", ".join(frame.columns)
            self._duck.execute(
                f"INSERT INTO {table} ({columns}) SELECT {columns} FROM incoming_frame"
            ).fetchall()
            self._duck.unregister("incoming_frame")
        else:
            frame.to_sql(table, self._engine, if_exists="append", index=False, method="multi", chunksize=5000)
        return len(frame)


def _duck_params(sql: str) -> str:
    # DuckDB spells named parameters $name; our SQL files use the portable :name.
    return re.sub(r"(?<![:\w]):(\w+)", r"$\1", sql)


def quote_identifier(name: str) -> str:
    """A SQL identifier in double quotes (for names that come from configuration, such as a CSV header)."""
    return '"' + name.replace('"', '""') + '"'


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def nullable_column(expression: str, name: str) -> str:
    """`expression AS name`, in a form DuckDB cannot prove non-null.

    DuckDB 2 writes a Parquet column as REQUIRED when it can prove the column has no nulls, so the schema
    of a file would depend on the rows in it; pmg's files always have the declared, nullable schema.
    """
    return f"CASE WHEN {expression} IS NULL THEN NULL ELSE {expression} END AS {quote_identifier(name)}"


def _duck_cast(column: str, found: str, wanted: pa.DataType) -> str:
    import pyarrow as pa

    if pa.types.is_string(wanted):
        return column if found == "VARCHAR" else f"CAST({column} AS VARCHAR)"
    if pa.types.is_timestamp(wanted):
        if found == "TIMESTAMP":
            return column
        if found.startswith("TIMESTAMP WITH TIME ZONE"):
            return f"CAST(timezone('UTC', {column}) AS TIMESTAMP)"
        return f"CAST({column} AS TIMESTAMP)"
    if pa.types.is_float64(wanted):
        return column if found == "DOUBLE" else f"CAST({column} AS DOUBLE)"
    raise TypeError(f"no DuckDB type for {wanted}")


def _typed_array(values, wanted: pa.DataType) -> pa.Array:
    """An Arrow array of `wanted` type from driver values (Decimal, aware datetimes, bytes, None...)."""
    import pyarrow as pa

    try:
        return pa.array(values, type=wanted)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return pa.array(values).cast(wanted)


def _safe_url(url: str) -> str:
    """`url` without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


# SQLAlchemy drivers for Airflow connection types.
_CONNECTION_DRIVERS = {
    "postgres": "postgresql+psycopg2",
    "postgresql": "postgresql+psycopg2",
    "mysql": "mysql",
    "sqlite": "sqlite",
    "mssql": "mssql+pyodbc",
}


def connection_url(conn) -> str:
    """A SQLAlchemy (or duckdb:///) URL from an Airflow Connection.

    Airflow writes a Postgres connection's URI as postgres://, which SQLAlchemy 2 refuses, so the URL is
    built from the connection's fields; its extras become URL query parameters (sslmode, ...).
    A connection of type duckdb names the database file in `host` (or `schema`).
    """
    from sqlalchemy.engine import URL

    conn_type = (conn.conn_type or "").lower()
    if conn_type == "duckdb":
        path = conn.host or conn.schema or ""
        return f"duckdb:///{path}"
    driver = _CONNECTION_DRIVERS.get(conn_type)
    if driver is None:
        raise ValueError(
            f"Airflow connection {conn.conn_id!r} has type {conn.conn_type!r}; pmg's warehouse supports "
            f"{', '.join(sorted(_CONNECTION_DRIVERS) + ['duckdb'])}"
        )
    extra = {k: str(v) for k, v in (conn.extra_dejson or {}).items() if v is not None}
    url = URL.create(
        driver,
        username=conn.login or None,
        password=conn.password or None,
        host=conn.host or None,
        port=conn.port or None,
        database=conn.schema or None,
        query=extra,
    )
    return url.render_as_string(hide_password=False)


def warehouse_url(settings: Settings) -> str:
    """The SQLAlchemy/DuckDB URL to use: an Airflow connection when one is named, else the URL.

    Outside a task, Airflow still reads connections from AIRFLOW_CONN_<ID> environment variables (and
    its secrets backends), so the same settings work in a test, a CLI and a worker.
    """
    if settings.warehouse_conn_id:
        from airflow.sdk import BaseHook

        return connection_url(BaseHook.get_connection(settings.warehouse_conn_id))
    return settings.warehouse_url


def connect(settings: Settings) -> Warehouse:
    return Warehouse(warehouse_url(settings), memory_limit=settings.duckdb_memory_limit)
