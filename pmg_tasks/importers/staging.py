"""Loading imported rows into the warehouse: stage them in a temporary table, then run one statement.

The statements live in sql/ and are the same on every engine:

    events  sql/import_events.sql     insert events whose event_id is not there yet
    items   sql/upsert_items.sql      insert new items, replace known ones
    users   sql/insert_new_users.sql  insert users seen for the first time

so importing the same file twice changes nothing. Staging and the statement run in one transaction.
How rows reach the staging table depends on the engine: inside DuckDB they never leave the engine; into
PostgreSQL they stream as CSV through COPY, one Arrow batch at a time; into any other SQLAlchemy
database they go by executemany. Memory holds one batch, whatever the file holds.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pmg_tasks.warehouse import (
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    USER_COLUMNS,
    Warehouse,
    events_schema,
    items_schema,
    load_sql,
    users_schema,
)

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

# table -> (staging table, load statement, columns, schema)
TARGETS = {
    "events": ("import_events", "import_events.sql", EVENT_COLUMNS, events_schema),
    "items": ("import_items", "upsert_items.sql", ITEM_COLUMNS, items_schema),
    "users": ("import_users", "insert_new_users.sql", USER_COLUMNS, users_schema),
}


def load(warehouse: Warehouse, table: str, *, duckdb_sql: str | None = None, batches=None) -> int:
    """Stage rows for `table` and run its load statement; returns the rows the statement wrote.

    Give the rows either as `duckdb_sql`, a query on the warehouse's own DuckDB connection (DuckDB
    warehouses only: the rows stay inside the engine), or as `batches`: an Arrow table, a
    RecordBatchReader or an iterable of record batches with the table's columns.
    """
    staging, statement, columns, schema_of = TARGETS[table]
    schema = schema_of()
    if warehouse.is_duckdb:
        return _load_duckdb(warehouse, staging, load_sql(statement), columns, duckdb_sql, batches)
    if duckdb_sql is not None:
        raise TypeError("duckdb_sql needs a DuckDB warehouse; pass batches for other engines")
    return _load_sqlalchemy(warehouse, staging, table, load_sql(statement), schema, _batches(batches, schema))


def _load_duckdb(warehouse: Warehouse, staging: str, statement: str, columns, duckdb_sql, batches) -> int:
    con = warehouse.duckdb
    names = ", ".join(columns)
    if duckdb_sql is None:
        con.register("pmg_import_source", batches)
        duckdb_sql = f"SELECT {names} FROM pmg_import_source"
    con.execute("BEGIN TRANSACTION").fetchall()
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {staging} AS SELECT {names} FROM ({duckdb_sql}) AS staged"
        ).fetchall()
        written = int(con.execute(statement).fetchall()[0][0])
        con.execute(f"DROP TABLE {staging}").fetchall()
        con.execute("COMMIT").fetchall()
    except BaseException:
        con.execute("ROLLBACK").fetchall()
        raise
    finally:
        if batches is not None:
            con.unregister("pmg_import_source")
    return written


def _load_sqlalchemy(warehouse: Warehouse, staging: str, table: str, statement: str, schema, batches) -> int:
    import sqlalchemy

    names = ", ".join(schema.names)
    postgres = warehouse.dialect == "postgresql"
    with warehouse.engine.begin() as conn:
        # A temporary table with the target's own column types, whatever the engine calls them.
        conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {staging} AS SELECT {names} FROM {table} WHERE 1 = 0")
        insert = sqlalchemy.text(
            f"INSERT INTO {staging} ({names}) VALUES ({', '.join(':' + n for n in schema.names)})"
        )
        for batch in batches:
            if not batch.num_rows:
                continue
            if postgres:
                _copy_csv(conn, staging, names, batch)
            else:
                conn.execute(insert, batch.to_pylist())
        written = conn.execute(sqlalchemy.text(statement)).rowcount
        conn.exec_driver_sql(f"DROP TABLE {staging}")
    return int(written)


def _copy_csv(conn, staging: str, names: str, batch: pa.RecordBatch) -> None:
    """COPY one batch into PostgreSQL as CSV (NULL is an unquoted empty field, '' a quoted one)."""
    import pyarrow.csv as pacsv

    buffer = io.BytesIO()
    pacsv.write_csv(batch, buffer, write_options=pacsv.WriteOptions(include_header=False))
    buffer.seek(0)
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.copy_expert(f"COPY {staging} ({names}) FROM STDIN WITH (FORMAT csv)", buffer)
    finally:
        cursor.close()


def _batches(source, schema: pa.Schema) -> Iterable[pa.RecordBatch]:
    """Record batches of `schema` from a table, a reader or an iterable of batches.

    Text columns lose NUL characters (replaced by U+FFFD): PostgreSQL text cannot hold them, and an id or
    title with a NUL is for validation to judge, not for the load to crash on.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(source, pa.Table):
        source = source.to_batches()
    for batch in source:
        table = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
        for i, field in enumerate(schema):
            if pa.types.is_string(field.type):
                table = table.set_column(i, field, pc.replace_substring(table.column(i), "\x00", "\ufffd"))
        yield from table.to_batches()
