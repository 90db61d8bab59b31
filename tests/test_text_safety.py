"""Text safety: denylists match whole words and phrases, everywhere text reaches a prompt; a missing value
never becomes a word; markup and colour codes never reach a prompt."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from pmg_tasks.histories import item_keywords, render_item
from pmg_tasks.keywords import catalog
from pmg_tasks.keywords.prompts import data_block, target_request
from pmg_tasks.keywords.scenario import load_scenario
from pmg_tasks.text_safety import (
    Denylist,
    clean_keyword,
    clean_text,
    is_missing,
    split_categories,
    strip_markup,
)


@pytest.mark.parametrize(
    ("word", "denied"),
    [
        ("war", True),
        ("war drama", True),
        ("post-war", True),
        ("WAR", True),
        ("ｗａｒ", True),  # full-width letters fold to plain ones
        ("warm light", False),
        ("award", False),
        ("swarm", False),
        ("wars", False),  # whole words: a plural is its own word, list it to deny it
    ],
)
def test_a_denied_word_matches_whole_words_only(word, denied):
    assert Denylist(["War"]).denies(word) is denied


def test_a_denied_phrase_matches_across_spaces_hyphens_and_underscores():
    denylist = Denylist(["red wine"])
    assert denylist.keep(["red wine", "red-wine stain", "red_wine", "red  wine", "red", "wine", "red wines"]) == [
        "red", "wine", "red wines"
    ]


def test_redact_cuts_denied_words_out_of_free_text_and_tidies_what_is_left():
    denylist = Denylist(["gore", "violence"])
    assert denylist.redact("Gore and Glory, violence, neon") == "and Glory, neon"
    assert denylist.redact("cinematic poster") == "cinematic poster"
    assert denylist.redact("Gore") == ""


def test_an_empty_denylist_denies_nothing():
    assert not Denylist([]) and not Denylist(["", "  "])
    assert Denylist([]).keep(["anything"]) == ["anything"]
    assert Denylist([]).redact("The Title") == "The Title"


# -- missing values never become text, markup never reaches a prompt -----------------------------------

# Every spelling of "no value" a catalog arrives with: Python's, numpy's, pandas', and the text exports write.
MISSING = [None, float("nan"), np.nan, np.float32("nan"), pd.NA, pd.NaT, "nan", "NaN", "None", "null", "NULL",
           "", "  ", "<NA>"]
MISSING_IDS = [repr(m) for m in MISSING]
NULL_WORD = re.compile(r"\b(?:nan|none|null|nat)\b|<na>", re.IGNORECASE)


def assert_no_null_word(text: str) -> None:
    assert not NULL_WORD.search(text), text


@pytest.mark.parametrize("missing", MISSING, ids=MISSING_IDS)
def test_a_missing_value_is_no_text_in_every_helper(missing):
    assert is_missing(missing)
    assert clean_text(missing) == "" and clean_keyword(missing) == "" and split_categories(missing) == []


@pytest.mark.parametrize("value", [0, 0.0, False, "0", "Nancy", "nano", "None of the above", "N/A Bag", "Nat King"])
def test_values_that_only_look_missing_are_kept(value):
    assert not is_missing(value)
    assert clean_text(value) != ""


def test_missing_parts_of_a_list_are_left_out():
    assert split_categories("Drama|nan||None| Comedy ") == ["Drama", "Comedy"]
    assert split_categories(["Tools", None, float("nan"), "null", "Hand Tools|nan"]) == ["Tools", "Hand Tools"]
    assert split_categories(np.array(["Tools", "nan"], dtype=object)) == ["Tools"]


@pytest.mark.parametrize("missing", MISSING, ids=MISSING_IDS)
def test_histories_render_no_placeholder_for_a_missing_part(missing):
    assert render_item("Bench Vise", missing, missing) == "Bench Vise"
    assert render_item("Bench Vise", "Tools", missing) == "Bench Vise (Tools)"
    assert render_item("Bench Vise", missing, json.dumps({"brand": "Wilton"})) == "Bench Vise: wilton"
    assert render_item(missing, missing, missing) == ""
    attributes = {"brand": "nan", "color": None, "size": "None", "material": "null", "finish": float("nan")}
    assert item_keywords(json.dumps(attributes, allow_nan=True)) == []
    assert item_keywords(attributes) == []
    assert item_keywords(missing) == []


@pytest.mark.parametrize("missing", MISSING, ids=MISSING_IDS)
def test_keyword_prompts_leave_out_what_the_catalog_lacks(missing):
    scenario = load_scenario("product_banners")
    request = target_request(
        scenario, {"title": "Wilton Bench Vise", "categories": missing, "description": missing}, 8, 64
    )
    assert "Title: Wilton Bench Vise" in request.user
    assert "Categories:" not in request.user and "Description:" not in request.user
    assert_no_null_word(request.user.replace(json.dumps(list(scenario.target_example)), ""))
    untitled = target_request(scenario, {"title": missing, "categories": "Tools", "description": "Cast iron"}, 8, 64)
    assert "Title:" not in untitled.user and "Categories: Tools" in untitled.user
    assert data_block([missing, "Bench Vise"]) == "<data>\n\nBench Vise\n</data>"


@pytest.mark.parametrize("missing", MISSING, ids=MISSING_IDS)
def test_catalog_keywords_have_no_word_for_a_missing_value(missing):
    item = {"title": "Wilton Bench Vise", "categories": missing, "description": missing,
            "attributes": json.dumps({"brand": "Wilton", "color": "nan", "size": None})}
    assert catalog.target_item_keywords(item) == ["bench vise", "wilton"]
    empty = {"title": missing, "categories": missing, "attributes": missing}
    assert catalog.target_item_keywords(empty) == [] and catalog.item_brand(empty) == ""
    assert catalog.preference_keywords([empty, item], limit=8) == ["bench vise", "wilton"]
    assert catalog.CatalogVocabulary.from_items([empty]).titles == 0


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Bench Vise<script>alert(1)</script>", "Bench Vise"),
        ("<b>Bench</b> <i>Vise</i>", "Bench Vise"),
        ("Bench Vise <img src=x onerror=alert(1)>", "Bench Vise"),
        ("&lt;script&gt;alert(1)&lt;/script&gt;Bench Vise", "Bench Vise"),
        ("\x1b[31mBench Vise\x1b[0m", "Bench Vise"),
        ("[31mBench Vise[0m", "Bench Vise"),
        ("Bench [1;33mVise", "Bench Vise"),
        ("Bench Vise <!-- hidden -->", "Bench Vise"),
        ("Hamlet <Director's Cut>", "Hamlet <Director's Cut>"),  # not HTML: a title's own words stay
        ("Tom & Jerry [2]", "Tom & Jerry [2]"),
        ("<b>null</b>", ""),
    ],
)
def test_markup_and_colour_codes_are_cut_out_of_titles(raw, clean):
    assert clean_text(raw) == clean
    assert strip_markup(raw).split() == clean.split() or clean == ""


def test_a_title_with_markup_reaches_no_prompt_with_it():
    scenario = load_scenario("product_banners")
    hostile = "\x1b[31mWilton[0m <script>steal()</script>Bench Vise"
    assert render_item(hostile, "Tools", None) == "Wilton Bench Vise (Tools)"
    request = target_request(scenario, {"title": hostile}, 8, 64)
    assert "Title: Wilton Bench Vise" in request.user
    assert "script" not in request.user and "[31m" not in request.user and "steal" not in request.user
    assert catalog.title_phrases(hostile) == ["wilton bench vise"]
