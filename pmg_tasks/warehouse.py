"""The warehouse: an embedded DuckDB file by default, any SQLAlchemy database (PostgreSQL) in production.

Queries live in `sql/` and take named parameters (`:window_start`); values are always bound, never
formatted into SQL text. Results stream out in Arrow record batches so memory stays bounded whatever a
window holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from pmg_tasks.settings import Settings

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

# The Arrow shape of what extraction writes, whichever engine produced it.
EVENT_COLUMNS = ("event_id", "user_id", "item_id", "session_id", "event_type", "event_ts", "dwell_seconds")
ITEM_COLUMNS = ("item_id", "title", "categories", "description", "attributes", "image_uri", "updated_at")


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


def load_sql(name: str) -> str:
    return (SQL_DIR / name).read_text()


def _split_statements(script: str) -> list[str]:
    without_comments = re.sub(r"--[^\n]*", "", script)
    return [s.strip() for s in without_comments.split(";") if s.strip()]


class Warehouse:
    """One connection to the warehouse. Use as a context manager."""

    def __init__(self, url: str):
        self.url = url
        self.is_duckdb = url.startswith("duckdb://")
        if self.is_duckdb:
            import duckdb

            path = url[len("duckdb:///") :] or ":memory:"
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._duck = duckdb.connect(path)
        else:
            import sqlalchemy

            self._engine = sqlalchemy.create_engine(url)

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
            self._duck.execute(_duck_params(sql), dict(params or {}))
        else:
            import sqlalchemy

            with self._engine.begin() as conn:
                conn.execute(sqlalchemy.text(sql), dict(params or {}))

    def apply_ddl(self) -> None:
        for statement in _split_statements(load_sql("ddl.sql")):
            self.execute(statement)

    def fetch_frame(self, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        if self.is_duckdb:
            return self._duck.execute(_duck_params(sql), dict(params or {})).df()
        import pandas as pd
        import sqlalchemy

        with self._engine.connect() as conn:
            return pd.read_sql(sqlalchemy.text(sql), conn, params=dict(params or {}))

    def stream(
        self, sql: str, params: Mapping[str, Any] | None = None, chunk_rows: int = 500_000
    ) -> Iterator[pa.RecordBatch]:
        """Rows of `sql` as Arrow record batches of at most `chunk_rows`."""
        import pyarrow as pa

        if self.is_duckdb:
            # A relation streams straight into Arrow; execute() would copy every row once more.
            relation = self._duck.sql(_duck_params(sql), params=dict(params or {}))
            yield from relation.to_arrow_reader(chunk_rows)
            return
        import sqlalchemy

        with self._engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=chunk_rows).execute(
                sqlalchemy.text(sql), dict(params or {})
            )
            names = list(result.keys())
            for rows in result.partitions():
                columns = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
                yield pa.RecordBatch.from_arrays([pa.array(c) for c in columns], names=names)

    def insert_frame(self, table: str, frame: pd.DataFrame) -> int:
        """Append rows; `table` must be one of ours (it is an identifier, so it is checked, not bound)."""
        if table not in {"events", "items", "users"}:
            raise ValueError(f"unknown warehouse table {table!r}")
        if frame.empty:
            return 0
        if self.is_duckdb:
            self._duck.register("incoming_frame", frame)
            columns = ", ".join(frame.columns)
            self._duck.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM incoming_frame")
            self._duck.unregister("incoming_frame")
        else:
            frame.to_sql(table, self._engine, if_exists="append", index=False, method="multi", chunksize=5000)
        return len(frame)


def _duck_params(sql: str) -> str:
    # DuckDB spells named parameters $name; our SQL files use the portable :name.
    return re.sub(r"(?<![:\w]):(\w+)", r"$\1", sql)


def warehouse_url(settings: Settings) -> str:
    """The SQLAlchemy/DuckDB URL to use: an Airflow connection when one is named, else the URL."""
    if settings.warehouse_conn_id:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(settings.warehouse_conn_id).get_uri()
    return settings.warehouse_url


def connect(settings: Settings) -> Warehouse:
    return Warehouse(warehouse_url(settings))
