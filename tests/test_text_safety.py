"""Text safety: denylists match whole words and phrases, everywhere text reaches a prompt."""

from __future__ import annotations

import pytest

from pmg_tasks.text_safety import Denylist


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
