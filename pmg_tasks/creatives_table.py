"""The `generated_creatives` warehouse table: the manifests of every date, queryable by user.

Publish upserts a date's manifest rows (sql/upsert_generated_creatives.sql), keyed by (ds, campaign_id,
user_id, item_id, rank), so a rerun replaces rather than duplicates. Rows are staged in bulk: DuckDB reads
the Arrow table in place; PostgreSQL takes them by COPY, which is what keeps a million rows in seconds.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from pmg_tasks.warehouse import _split_statements, load_sql

if TYPE_CHECKING:
    import pyarrow as pa

    from pmg_tasks.warehouse import Warehouse

TABLE = "generated_creatives"
# The manifest's columns the table keeps (its list columns stay in the manifest), in table order after ds.
COLUMNS = (
    "campaign_id", "user_id", "item_id", "rank", "creative_id", "image_key", "image_uri", "segment_id",
    "personalization", "seed", "d_p", "d_t", "consistency", "z", "alpha", "consistency_weight", "headline",
    "prompt", "signature", "diffusion_model", "clip_model", "llm_model", "token_embeddings", "safety",
)  # fmt: skip


# Rows a DuckDB upsert statement takes at once.
DUCKDB_SLICE_ROWS = 100_000


def create_table(warehouse: Warehouse) -> None:
    for statement in _split_statements(load_sql("generated_creatives.sql")):
        warehouse.execute(statement)


def upsert_creatives(warehouse: Warehouse, ds: str, manifest: pa.Table) -> int:
    """Make the table's rows of `ds` exactly `manifest`'s (all campaigns of the date); returns the rows."""
    import datetime as dt

    ds = dt.date.fromisoformat(ds).isoformat()
    create_table(warehouse)
    rows = manifest.select(list(COLUMNS))
    statements = _split_statements(load_sql("upsert_generated_creatives.sql"))
    if warehouse.is_duckdb:
        _upsert_duckdb(warehouse, ds, rows, statements)
    else:
        _upsert_postgres(warehouse, ds, rows, statements)
    return rows.num_rows


def _upsert_duckdb(warehouse: Warehouse, ds: str, rows: pa.Table, statements: list[str]) -> None:
    from pmg_tasks.warehouse import _duck_params

    duck = warehouse.duckdb
    upsert, delete = statements
    duck.execute("BEGIN TRANSACTION").fetchall()
    try:
        # Slices of the Arrow rows through a view (never a copy): what an upsert holds at once stays bounded.
        # `ds` is a checked date.
        for start in range(0, max(rows.num_rows, 1), DUCKDB_SLICE_ROWS):
            duck.register("incoming_creatives", rows.slice(start, DUCKDB_SLICE_ROWS))
            duck.execute(
                f"CREATE OR REPLACE TEMP VIEW staged_creatives AS SELECT DATE '{ds}' AS ds, * FROM incoming_creatives"
            ).fetchall()
            duck.execute(_duck_params(upsert)).fetchall()
            duck.unregister("incoming_creatives")
        # The stale rows of the date: those no slice holds.
        duck.register("incoming_creatives", rows)
        duck.execute(
            f"CREATE OR REPLACE TEMP VIEW staged_creatives AS SELECT DATE '{ds}' AS ds, * FROM incoming_creatives"
        ).fetchall()
        duck.execute(_duck_params(delete), {"ds": ds}).fetchall()
        duck.execute("DROP VIEW staged_creatives").fetchall()
        duck.unregister("incoming_creatives")
    except BaseException:
        duck.execute("ROLLBACK").fetchall()
        raise
    duck.execute("COMMIT").fetchall()


def _upsert_postgres(warehouse: Warehouse, ds: str, rows: pa.Table, statements: list[str]) -> None:
    import pyarrow.csv as csv

    buffer = io.BytesIO()
    # Every value quoted: an empty headline stays an empty text, never a NULL.
    csv.write_csv(rows, buffer, csv.WriteOptions(include_header=False, quoting_style="all_valid"))
    buffer.seek(0)
    connection = warehouse.engine.raw_connection()
    try:
        with connection.cursor() as cursor:
            # The table's shape without its constraints; every staged row is of date `ds` (a checked date,
            # so it may stand in the DDL as a literal).
            cursor.execute(f"CREATE TEMP TABLE staged_creatives ON COMMIT DROP AS SELECT * FROM {TABLE} WITH NO DATA")
            cursor.execute(f"ALTER TABLE staged_creatives ALTER COLUMN ds SET DEFAULT DATE '{ds}'")
            cursor.copy_expert(f"COPY staged_creatives ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT csv)", buffer)
            for statement in statements:
                cursor.execute(statement.replace(":ds", "%(ds)s"), {"ds": ds})
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    finally:
        connection.close()
