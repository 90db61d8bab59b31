"""Histories: strongest engagements first, rendered in PMG's template, hashed stably."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd

from pmg_tasks.histories import build_histories, rank_engagements, render_item
from pmg_tasks.layout import run_key
from pmg_tasks.store import open_store, read_frame, write_table

DS = "2026-11-20"


def events(rows):
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "dwell_seconds"])
    frame["event_id"] = [f"e{i}" for i in range(len(frame))]
    frame["session_id"] = "s"
    frame["event_ts"] = [dt.datetime(2026, 11, 20, 10, i) for i in range(len(frame))]
    return frame


def catalog(titles: dict[str, str]):
    return pd.DataFrame(
        {
            "item_id": list(titles),
            "title": list(titles.values()),
            "categories": "Drama|Romance",
            "description": "",
            "attributes": json.dumps({"mood": "dark", "era": "1990s"}),
            "image_uri": None,
            "updated_at": pd.Timestamp("2026-01-01"),
        }
    )


def stage(settings, event_rows, titles):
    store = open_store(settings)
    write_table(store, run_key(DS, "events_valid.parquet"), events(event_rows))
    write_table(store, run_key(DS, "items.parquet"), catalog(titles))
    build_histories(settings, DS)
    return read_frame(store, run_key(DS, "histories.parquet")).set_index("user_id")


def test_purchase_outranks_views_and_dwell_breaks_ties():
    ranked = rank_engagements(
        events([("u1", "a", "view", 500.0), ("u1", "b", "purchase", 1.0), ("u1", "c", "view", 900.0)])
    )
    assert ranked["item_id"].tolist() == ["b", "c", "a"]


def test_render_item_follows_the_template_and_cleans_hostile_titles():
    line = render_item("The \x1b[31mRed\x00 Door\n", "Drama|Romance", json.dumps({"mood": "dark", "era": "1990s"}))
    assert line == "The Red Door (Drama, Romance): dark, 1990s"
    assert len(render_item("x" * 10_000, "Drama", None)) < 200


def test_history_is_numbered_capped_and_hashed(settings):
    rows = [("u1", f"i{n}", "click", float(n)) for n in range(8)] + [("u2", "i0", "view", 1.0)]
    titles = {f"i{n}": f"Film {n}" for n in range(8)}
    histories = stage(settings, rows, titles)
    lines = histories.at["u1", "history_text"].splitlines()
    assert len(lines) == settings.history_length
    assert lines[0].startswith("1. Film 7 (Drama, Romance): dark, 1990s")
    assert histories.at["u1", "n_events"] == 8
    first_hash = histories.at["u1", "history_hash"]

    # Same behaviour, same hash; a new purchase changes it.
    assert stage(settings, rows, titles).at["u1", "history_hash"] == first_hash
    changed = stage(settings, rows + [("u1", "i0", "purchase", 1.0)], titles)
    assert changed.at["u1", "history_hash"] != first_hash
    assert changed.at["u2", "history_hash"] == histories.at["u2", "history_hash"]


def test_hash_follows_the_rendered_history_not_the_run(settings):
    rows = [("u1", "i0", "purchase", 5.0), ("u1", "i1", "view", 1.0), ("u2", "i1", "click", 3.0)]
    titles = {"i0": "Film 0", "i1": "Film 1", "i2": "Film 2"}
    first = stage(settings, rows, titles)
    # An edited title shows in the prompt, so it changes the hash of every history that holds the item.
    retitled = stage(settings, rows, {**titles, "i1": "Film One"})
    assert (retitled["history_hash"] != first["history_hash"]).all()
    # Events that do not change the top items (more views of a shown item) leave it alone.
    more_views = stage(settings, rows + [("u2", "i1", "view", 1.0)], titles)
    assert more_views.at["u2", "history_hash"] == first.at["u2", "history_hash"]
    assert more_views.at["u2", "n_events"] == 2


def test_events_for_items_missing_from_the_catalog_are_left_out(settings):
    rows = [("u1", "ghost", "purchase", 99.0), ("u1", "i0", "view", 1.0), ("u2", "ghost", "view", 1.0)]
    histories = stage(settings, rows, {"i0": "Film 0"})
    assert list(histories.index) == ["u1"]
    assert histories.at["u1", "history_text"] == "1. Film 0 (Drama, Romance): dark, 1990s"
    assert list(histories.at["u1", "item_ids"]) == ["i0"]
