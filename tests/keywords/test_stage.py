"""The keyword stage: never empty, always clean, sharded, and a night re-extracts only what changed."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from pmg_tasks.keywords.parsing import normalise
from pmg_tasks.keywords.stage import (
    GENERIC_KEYWORDS,
    extract_keyword_shard,
    extract_keywords,
    merge_keywords,
    plan_keyword_shards,
)
from pmg_tasks.layout import run_key
from pmg_tasks.store import open_store, read_frame, read_json
from pmg_tasks.text_safety import Denylist
from tests.keywords.conftest import DS, TARGETS, openai_settings, stage_shop, write_campaigns

NEXT = (dt.date.fromisoformat(DS) + dt.timedelta(days=1)).isoformat()


def outputs(settings, ds=DS):
    store = open_store(settings)
    return (read_frame(store, run_key(ds, "keywords.parquet")), read_frame(store, run_key(ds, "item_keywords.parquet")),
            read_json(store, run_key(ds, "stats/keywords.json")))


def assert_clean(words_per_row, limit: int, denied=()):
    for words in words_per_row:
        words = list(words)
        assert 0 < len(words) <= limit
        assert normalise(words) == words, "every keyword is already normalised and unique"
        assert not any(Denylist(denied).denies(w) for w in words)


def test_catalog_backend_is_the_default_and_keeps_the_contract(shop):
    result = extract_keywords(shop, DS)
    keywords, items, stats = outputs(shop)
    histories = read_frame(open_store(shop), run_key(DS, "histories.parquet"))
    assert result["backend"] == "catalog" and stats["model_calls"] == 0
    assert keywords["user_id"].tolist() == histories["user_id"].tolist()
    assert keywords["history_hash"].tolist() == histories["history_hash"].tolist()
    assert set(keywords["source"]) == {"catalog"} and set(keywords["backend"]) == {"catalog-v2"}
    assert len(items) == 20 and set(items["source"]) == {"catalog"}
    assert_clean(keywords["preference_keywords"], shop.keywords_per_user)
    assert_clean(items["keywords"], shop.keywords_per_user)
    assert {"users", "items", "model_calls", "cache_hits", "cache_misses", "backend"} <= set(stats)


def test_denylists_apply_and_a_user_never_ends_empty(shop):
    extract_keywords(shop, DS)
    before, _, _ = outputs(shop)
    # Deny every word the catalog offers the first user: they fall through to generic words.
    first = list(before["preference_keywords"].iloc[0])
    write_campaigns(shop, denylist=[*first, "popular"])
    extract_keywords(shop, DS)
    keywords, items, _ = outputs(shop)
    assert_clean(keywords["preference_keywords"], shop.keywords_per_user, denied=[*first, "popular"])
    assert_clean(items["keywords"], shop.keywords_per_user, denied=[*first, "popular"])
    assert keywords["source"].iloc[0] in {"catalog", "generic"}

    # Whole words: single letters deny nothing...
    write_campaigns(shop, denylist=list("abcdefghijklmnopqrstuvwxyz"))
    extract_keywords(shop, DS)
    # ...while denying every word anyone could get leaves a user with none, which is an error.
    every_word = {w for words in [*keywords["preference_keywords"], *items["keywords"]] for w in words}
    write_campaigns(shop, denylist=[*every_word, *GENERIC_KEYWORDS, *first])
    with pytest.raises(ValueError, match="leave no keyword"):
        extract_keywords(shop, DS)


def test_shards_cover_every_user_once_and_a_rerun_with_fewer_shards_leaves_nothing_stale(shop):
    sharded = shop.model_copy(update={"keywords": shop.keywords.model_copy(update={"users_per_shard": 4})})
    shards = plan_keyword_shards(sharded, DS)
    assert len(shards) > 2
    for index in shards:
        extract_keyword_shard(sharded, DS, index)
    merge_keywords(sharded, DS)
    keywords, items, stats = outputs(sharded)
    histories = read_frame(open_store(shop), run_key(DS, "histories.parquet"))
    assert sorted(keywords["user_id"]) == sorted(histories["user_id"]) and keywords["user_id"].is_unique
    assert sorted(items["item_id"]) == [f"m{i:05d}" for i in range(20)]
    assert stats["shards"] == len(shards) and stats["users"] == len(histories)

    assert plan_keyword_shards(shop, DS) == [0]
    assert [k.rsplit("/", 1)[1] for k in open_store(shop).list_keys(run_key(DS, "keywords/"))] == [
        "catalog_vocabulary.json", "plan.json"
    ]
    with pytest.raises(RuntimeError, match="no output"):
        merge_keywords(shop, DS)


def test_a_second_night_asks_the_model_only_about_what_changed(shop, chat_server):
    settings = openai_settings(shop, chat_server)
    extract_keywords(settings, DS)
    first_night = chat_server.calls()
    histories = read_frame(open_store(shop), run_key(DS, "histories.parquet"))

    # Next night: the same shop, one user buys something new, and one target item's description changes.
    changed_user = histories["user_id"].iloc[0]

    def new_purchase(events):
        extra = events.iloc[[0]].assign(user_id=changed_user, item_id="m00019", event_type="purchase",
                                        dwell_seconds=10_000.0, event_id="e-new")
        return pd.concat([events, extra], ignore_index=True)

    def new_description(catalog):
        return catalog.assign(description=catalog["description"].where(catalog["item_id"] != TARGETS[0], "Remastered."))

    stage_shop(settings, NEXT, edit_catalog=new_description, extra_events=new_purchase)
    extract_keywords(settings, NEXT)
    _, _, stats = outputs(settings, NEXT)
    assert chat_server.calls() - first_night == stats["model_calls"] == 2 + 1
    assert (stats["user_cache_misses"], stats["item_cache_misses"]) == (1, 1)
    assert stats["user_cache_hits"] == len(histories) - 1 and stats["item_cache_hits"] == len(TARGETS) - 1


def test_cache_entries_are_keyed_by_scenario_model_and_prompt(shop, chat_server):
    settings = openai_settings(shop, chat_server)
    extract_keywords(settings, DS)
    calls = chat_server.calls()
    keys = open_store(shop).list_keys("cache/keywords/users/")
    assert keys and all(k.startswith("cache/keywords/users/movie_posters/test-model-") for k in keys)
    entry = json.loads(open_store(shop).get_bytes(keys[0]))
    assert entry["status"] == "ok" and entry["keywords"] == ["moody neon", "retro poster"]

    for change in ({"model": "other-model"}, {"scenario": "fashion"}, {"prompt_version": "2"}):
        extract_keywords(openai_settings(shop, chat_server, **change), DS)
        assert chat_server.calls() > calls, change
        calls = chat_server.calls()
