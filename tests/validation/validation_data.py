"""Events for the validation tests: a run date, its window, valid rows and a catalog."""

from __future__ import annotations

from datetime import datetime, timedelta

import pyarrow as pa

from pmg_tasks.warehouse import items_schema

DS = "2026-11-20"
WINDOW_START = datetime(2026, 11, 20)
WINDOW_END = datetime(2026, 11, 21)
# "now" inside the window, so that "in the future" and "after the window" are different things.
NOW = datetime(2026, 11, 20, 23, 0)
N_ITEMS = 20
TYPES = ("view", "click", "add_to_cart", "purchase")


def event(i: int, **overrides) -> dict:
    """A valid event number i (timestamps spread over the first 22 hours of DS)."""
    row = {
        "event_id": f"ev-{i:06d}",
        "user_id": f"user-{i % 37}",
        "item_id": f"item-{i % N_ITEMS}",
        "session_id": None if i % 11 == 0 else f"sess-{i % 50}",
        "event_type": TYPES[i % 4],
        "event_ts": WINDOW_START + timedelta(seconds=(i * 7919) % (22 * 3600), microseconds=i % 1000),
        "dwell_seconds": None if i % 7 == 0 else float(i % 300) * 1.5,
    }
    row.update(overrides)
    return row


def valid_events(n: int, first: int = 0) -> list[dict]:
    return [event(i) for i in range(first, first + n)]


def items_table(n: int = N_ITEMS) -> pa.Table:
    rows = [
        {
            "item_id": f"item-{i}",
            "title": f"item {i}",
            "categories": "a|b",
            "description": "",
            "attributes": "{}",
            "image_uri": "",
            "updated_at": WINDOW_START,
        }
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=items_schema())
