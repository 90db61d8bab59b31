"""Stage 3, histories: each user's behaviour as text, in the PMG item template.

    1. The Silent Harbor (Drama, Romance): melancholic, noir, 1990s
    2. ...

A stable hash of the rendered history lets later stages recognise users whose history did not change.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING

from pmg_tasks.layout import run_key
from pmg_tasks.store import open_store, read_frame, write_json, write_table
from pmg_tasks.text_safety import clean_keyword, clean_text, is_missing, split_categories

if TYPE_CHECKING:
    import pandas as pd

    from pmg_tasks.settings import Settings

log = logging.getLogger(__name__)

# How much an event says about taste: a purchase more than a glance.
EVENT_WEIGHTS = {"view": 1, "click": 2, "add_to_cart": 3, "purchase": 4}
ITEM_KEYWORD_ATTRIBUTES = ("mood", "style", "era", "country", "genre", "color", "material", "season")


def item_keywords(attributes_json: object, limit: int = 4) -> list[str]:
    """The catalog's own words for an item: its attribute values, in a fixed attribute order. Missing
    values (null, NaN, "nan", ...) and values that are not words (true/false, lists, objects) are left out."""
    attributes = parse_attributes(attributes_json)
    ordered = [attributes[a] for a in ITEM_KEYWORD_ATTRIBUTES if a in attributes]
    ordered += [v for k, v in sorted(attributes.items()) if k not in ITEM_KEYWORD_ATTRIBUTES]
    words = [clean_keyword(v) for v in ordered if isinstance(v, str | int | float) and not isinstance(v, bool)]
    return list(dict.fromkeys(w for w in words if w))[:limit]


def parse_attributes(attributes_json: object) -> dict:
    """An item's attributes as a dict: from JSON text (the warehouse's form) or a mapping; {} otherwise."""
    if isinstance(attributes_json, dict):
        return attributes_json
    if not isinstance(attributes_json, str | bytes) or is_missing(attributes_json):
        return {}
    try:
        attributes = json.loads(attributes_json)
    except (TypeError, ValueError):
        return {}
    return attributes if isinstance(attributes, dict) else {}


def render_item(title: object, categories: object, attributes: object) -> str:
    """PMG's item template: `Title (categories): kw1, kw2, ...`, every part cleaned and capped. A part
    the catalog does not have is left out, never written as a placeholder."""
    cats = ", ".join(split_categories(categories))
    keywords = ", ".join(item_keywords(attributes))
    name = clean_text(title, 120)
    line = f"{name} ({cats})" if name and cats else name or cats
    return f"{line}: {keywords}" if line and keywords else line or keywords


def rank_engagements(events: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item): strongest event, total dwell, latest time, ranked per user."""
    frame = events.assign(weight=events["event_type"].map(EVENT_WEIGHTS).fillna(0).astype(int))
    per_item = (
        frame.groupby(["user_id", "item_id"], sort=False)
        .agg(weight=("weight", "max"), dwell=("dwell_seconds", "sum"), last_ts=("event_ts", "max"),
             events=("event_id", "count"))
        .reset_index()
    )
    # Strongest signal first; dwell breaks ties; then recency, then id so the order is total.
    per_item = per_item.sort_values(
        ["user_id", "weight", "dwell", "last_ts", "item_id"], ascending=[True, False, False, False, True]
    )
    per_item["rank"] = per_item.groupby("user_id").cumcount() + 1
    return per_item


def build_histories(settings: Settings, ds: str) -> dict:
    """Write `histories.parquet`: user_id, history_text, item_ids, categories, history_hash,
    n_events, engagement, last_event_date. One row per user with at least one valid event in the window."""
    import pandas as pd

    store = open_store(settings)
    events = read_frame(store, run_key(ds, "events_valid.parquet"))
    items = read_frame(store, run_key(ds, "items.parquet")).set_index("item_id")
    known = events["item_id"].isin(items.index)
    if not known.all():
        # Validation quarantines these; a history is only ever built from items the catalog can describe.
        log.warning("%d events name items missing from the catalog; leaving them out", int((~known).sum()))
        events = events[known]
    if events.empty:
        raise ValueError(
            f"{run_key(ds, 'events_valid.parquet')} has no rows for catalog items: no user has a history for "
            f"{ds}; check the extraction window and the validation report"
        )
    ranked = rank_engagements(events)
    totals = ranked.groupby("user_id").agg(
        n_events=("events", "sum"), engagement=("weight", "sum"), last_event=("last_ts", "max")
    )
    top = ranked[ranked["rank"] <= settings.history_length].join(items, on="item_id")
    # Each item is rendered once, however many histories it appears in.
    rendered = {
        row.Index: render_item(row.title, row.categories, row.attributes)
        for row in items.loc[top["item_id"].unique()].itertuples()
    }

    rows = []
    for user_id, group in top.groupby("user_id", sort=True):
        text = "\n".join(f"{i}. {rendered[item_id]}" for i, item_id in enumerate(group["item_id"], start=1))
        categories = sorted({c for value in group["categories"] for c in split_categories(value)})
        rows.append(
            {
                "user_id": user_id,
                "history_text": text,
                "item_ids": list(group["item_id"]),
                "categories": categories,
                # The text is all a keyword prompt sees of a history, so it is what the hash covers: a new
                # event that changes the top items, or an edited title or attribute, changes it.
                "history_hash": hashlib.sha256(text.encode()).hexdigest()[:16],
                "n_events": int(totals.at[user_id, "n_events"]),
                "engagement": int(totals.at[user_id, "engagement"]),
                # The day of the user's latest event: what a campaign's audience.recency_days compares.
                "last_event_date": str(pd.Timestamp(totals.at[user_id, "last_event"]).date()),
            }
        )

    histories = pd.DataFrame(rows)
    key = write_table(store, run_key(ds, "histories.parquet"), histories)
    stats = {"users": len(histories), "events": len(events), "history_length": settings.history_length}
    write_json(store, run_key(ds, "stats/histories.json"), stats)
    log.info("built %d histories from %d valid events", len(histories), len(events))
    return {"users": len(histories), "histories_key": key}
