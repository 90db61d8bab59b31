"""Which warehouses the demo may seed: an empty one, or one that holds exactly what the demo seeded last.

Seeding replaces the items, users and events tables, so it must never run on someone's own data. The seeder
leaves a marker table, `pmg_demo_seed`, with the row count of every table it wrote; a warehouse whose
tables hold anything else (an import, a real clickstream, rows added after the seed) is refused.
"""

from __future__ import annotations

import datetime as dt

from pmg_tasks.warehouse import Warehouse

MARKER_TABLE = "pmg_demo_seed"
SEEDED_TABLES = ("items", "users", "events")


class DemoWarehouseInUse(RuntimeError):
    """The warehouse holds data the demo did not seed."""


def check_demo_may_seed(warehouse: Warehouse) -> None:
    """Raise DemoWarehouseInUse unless the tables are empty or hold exactly the demo's last seed."""
    counts = _row_counts(warehouse)
    if not any(counts.values()) or _marker_counts(warehouse) == counts:
        return
    held = ", ".join(f"{n:,} {table}" for table, n in counts.items() if n)
    raise DemoWarehouseInUse(
        f"the warehouse {warehouse.safe_url} holds data the demo did not seed ({held}). The demo replaces "
        "the items, users and events tables, so it leaves this warehouse alone. Point the demo at a "
        "warehouse of its own: PMG_HOME=/tmp/pmg-demo pmg demo run (a fresh embedded one), or "
        "PMG_WAREHOUSE_URL=duckdb:////tmp/pmg-demo.duckdb (and unset PMG_WAREHOUSE_CONN_ID)."
    )


def record_demo_seed(warehouse: Warehouse) -> None:
    """Write the marker: the row counts of the tables as the demo just left them."""
    counts = _row_counts(warehouse)
    warehouse.execute(
        f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (table_name VARCHAR PRIMARY KEY, row_count BIGINT, "
        "seeded_at TIMESTAMP)"
    )
    warehouse.execute(f"DELETE FROM {MARKER_TABLE}")
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    for table, rows in counts.items():
        warehouse.execute(
            f"INSERT INTO {MARKER_TABLE} (table_name, row_count, seeded_at) VALUES (:table, :rows, :now)",
            {"table": table, "rows": rows, "now": now},
        )


def _row_counts(warehouse: Warehouse) -> dict[str, int]:
    # SEEDED_TABLES are our own names, never input.
    return {t: int(warehouse.fetch_rows(f"SELECT count(*) FROM {t}")[0][0]) for t in SEEDED_TABLES}


def _marker_counts(warehouse: Warehouse) -> dict[str, int] | None:
    """The counts the marker recorded; None when the demo never seeded this warehouse."""
    if not warehouse.has_table(MARKER_TABLE):
        return None
    recorded = dict(warehouse.fetch_rows(f"SELECT table_name, row_count FROM {MARKER_TABLE}"))
    return {table: int(recorded.get(table, -1)) for table in SEEDED_TABLES}
