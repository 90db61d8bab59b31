"""The keyword stage: one row of preference keywords per user, one row of keywords per item."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pmg_tasks.keywords import catalog
from pmg_tasks.layout import run_key
from pmg_tasks.store import open_store, read_frame, write_json, write_table

if TYPE_CHECKING:
    from pmg_tasks.settings import Settings

log = logging.getLogger(__name__)


def extract_keywords(settings: Settings, ds: str) -> dict:
    """Write `keywords.parquet` (user_id, history_hash, preference_keywords, backend) and
    `item_keywords.parquet` (item_id, keywords). Every user ends with at least one keyword."""
    import pandas as pd

    store = open_store(settings)
    histories = read_frame(store, run_key(ds, "histories.parquet"))
    items = read_frame(store, run_key(ds, "items.parquet"))
    item_rows = {row["item_id"]: row for row in items.to_dict("records")}

    target = pd.DataFrame(
        {"item_id": items["item_id"], "keywords": [catalog.target_item_keywords(r) for r in item_rows.values()]}
    )
    users = []
    for history in histories.itertuples(index=False):
        history_items = [item_rows[i] for i in history.item_ids if i in item_rows]
        words = catalog.preference_keywords(history_items, settings.keywords_per_user)
        users.append(
            {
                "user_id": history.user_id,
                "history_hash": history.history_hash,
                # An item without metadata still says something: its categories or, at worst, "popular".
                "preference_keywords": words or ["popular"],
                "backend": catalog.BACKEND_ID,
            }
        )
    keywords = pd.DataFrame(users, columns=["user_id", "history_hash", "preference_keywords", "backend"])
    write_table(store, run_key(ds, "keywords.parquet"), keywords)
    write_table(store, run_key(ds, "item_keywords.parquet"), target)
    stats = {"backend": catalog.BACKEND_ID, "users": len(keywords), "items": len(target),
             "model_calls": 0, "cache_hits": 0, "cache_misses": 0}
    write_json(store, run_key(ds, "stats/keywords.json"), stats)
    log.info("keywords for %d users and %d items with backend %s", len(keywords), len(target), catalog.BACKEND_ID)
    return {"users": len(keywords), "items": len(target), "backend": catalog.BACKEND_ID}
