"""The transformers backend with the test-size causal LM: batched, left-padded, garbage in and safe out."""

from __future__ import annotations

import pytest

from pmg_tasks.keywords.backends import chat_text
from pmg_tasks.keywords.prompts import attributes_request, target_request
from pmg_tasks.keywords.scenario import load_scenario
from pmg_tasks.keywords.stage import extract_keywords
from pmg_tasks.layout import run_key
from pmg_tasks.store import open_store, read_frame, read_json
from tests.keywords.conftest import DS, TARGETS, transformers_settings

pytestmark = pytest.mark.slow


def test_a_batch_answers_like_one_request_at_a_time(lm):
    """Left padding is right: the same prompts give the same greedy answers batched and alone."""
    scenario = load_scenario("movie_posters")
    requests = [
        attributes_request(scenario, "1. The Silent Harbor (Drama): dark, 1990s", 8),
        target_request(scenario, {"title": "Neon Days", "categories": "Sci-Fi", "description": "A city."}, 8, 8),
        attributes_request(scenario, "1. A\n2. B (Comedy): bright\n3. C (Horror): tense, 1980s, japan", 8),
    ]
    batched = lm.generate(requests)
    alone = [lm.generate([request])[0] for request in requests]
    assert [c.text for c in batched] == [c.text for c in alone]
    assert all(isinstance(c.text, str) and 0 < c.completion_tokens <= 8 for c in batched)
    assert all(c.prompt_tokens > 0 for c in batched)


def test_prompts_use_a_plain_template_when_the_tokenizer_has_no_chat_template(lm):
    request = attributes_request(load_scenario("fashion"), "1. Linen Shirt (Tops): white", 12)
    text = chat_text(lm.tokenizer, request)
    assert text.index(request.system) < text.index(request.user) < text.index("### Assistant")


def test_the_stage_on_the_test_size_model_falls_back_and_never_ends_empty(shop, test_size_models, lm):
    """A random model answers garbage: every user goes through parse -> catalog fallback, counted."""
    settings = transformers_settings(shop, test_size_models.llm)
    extract_keywords(settings, DS, generator=lm)
    store = open_store(settings)
    keywords = read_frame(store, run_key(DS, "keywords.parquet"))
    stats = read_json(store, run_key(DS, "stats/keywords.json"))
    assert keywords["preference_keywords"].map(len).gt(0).all()
    assert stats["model_calls"] >= len(keywords) + len(TARGETS)
    assert stats["fallbacks"] + stats["repaired"] + keywords["source"].eq("llm").sum() == len(keywords)
    assert stats["model_id"] == test_size_models.llm
