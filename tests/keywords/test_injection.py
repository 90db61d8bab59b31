"""An injection corpus in the catalog: titles, categories, descriptions and attributes written to hijack a
prompt or smuggle words into a creative. Through the catalog path and the test-size model alike, every user
and item ends with clean keywords, and the hostile text never becomes one."""

from __future__ import annotations

import json

import pytest

from pmg_tasks.keywords.stage import extract_keywords
from pmg_tasks.layout import run_key
from pmg_tasks.store import open_store, read_frame
from tests.keywords.conftest import DS, stage_shop, transformers_settings, write_campaigns
from tests.keywords.test_prompts import INJECTIONS

HOSTILE_ITEMS = [f"m{i:05d}" for i in range(len(INJECTIONS))]
DENIED = ["gore", "hacked", "pirate"]


def hostile(catalog):
    catalog = catalog.copy()
    for position, text in enumerate(INJECTIONS):
        catalog.loc[position, "title"] = text
        catalog.loc[position, "description"] = text
        catalog.loc[position, "categories"] = f"Drama|{text[:60]}"
        catalog.loc[position, "attributes"] = json.dumps({"mood": text, "style": "gore", "era": "1990s"})
    return catalog


@pytest.fixture
def hostile_shop(settings):
    settings.home.mkdir(parents=True, exist_ok=True)
    stage_shop(settings, users=20, edit_catalog=hostile)
    write_campaigns(settings, denylist=DENIED, targets=HOSTILE_ITEMS[:4])
    return settings


def assert_no_hostile_keyword(settings):
    store = open_store(settings)
    keywords = read_frame(store, run_key(DS, "keywords.parquet"))
    items = read_frame(store, run_key(DS, "item_keywords.parquet"))
    histories = read_frame(store, run_key(DS, "histories.parquet"))
    assert len(keywords) == len(histories) and len(items) == 20
    for words in [*keywords["preference_keywords"], *items["keywords"]]:
        assert 0 < len(words) <= settings.keywords_per_user
        for word in words:
            assert len(word) <= 40 and len(word.split()) <= 4
            assert not any(d in word for d in DENIED)
            assert not any(m in word for m in ("ignore", "instruction", "system", "<", ">", "|", "#", "`", "{"))
    return keywords


def test_catalog_path_keeps_hostile_text_out_of_keywords(hostile_shop):
    extract_keywords(hostile_shop, DS)
    assert_no_hostile_keyword(hostile_shop)


@pytest.mark.slow
def test_test_size_model_keeps_hostile_text_out_of_keywords(hostile_shop, test_size_models, lm):
    settings = transformers_settings(hostile_shop, test_size_models.llm, max_new_tokens=8)
    extract_keywords(settings, DS, generator=lm)
    keywords = assert_no_hostile_keyword(settings)
    assert keywords["source"].isin(["llm", "llm_repaired", "catalog_fallback", "generic"]).all()
