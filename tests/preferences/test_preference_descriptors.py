from collections import Counter

from pmg_tasks.preferences.descriptors import DESCRIPTOR_COLUMNS, describe, describe_tokens, user_categories
from pmg_tasks.preferences.graph import build_interaction_graph


def tokens_of(code: int):
    return [(f"<pref_txt_0_{code}>", "txt", 0, code)]


def test_a_code_is_described_by_what_is_typical_of_its_users():
    user_tokens = {"u1": tokens_of(0), "u2": tokens_of(0), "u3": tokens_of(1), "u4": tokens_of(1)}
    categories = {
        "u1": Counter({"drama": 1.0, "noir": 3.0}),
        "u2": Counter({"drama": 1.0, "noir": 1.0}),
        "u3": Counter({"drama": 2.0, "comedy": 6.0}),
        "u4": Counter({"drama": 1.0, "comedy": 1.0}),
    }
    keywords = {"u1": ["Rain", "detective"], "u2": ["detective"], "u3": ["laughs"], "u4": ["laughs"]}
    frame = describe_tokens(user_tokens, categories, keywords).set_index("token")

    assert list(frame.reset_index().columns) == list(DESCRIPTOR_COLUMNS)
    noir = frame.loc["<pref_txt_0_0>"]
    assert noir["users"] == 2 and (noir["view"], noir["level"], noir["code"]) == ("txt", 0, 0)
    # drama is as common in each code as overall, so it says nothing about either
    assert noir["top_categories"] == ["noir"]
    # "rain" is one user's word: it speaks for that user, not for the code
    assert noir["top_keywords"] == ["detective"]
    assert noir["description"] == "detective, noir"
    assert frame.loc["<pref_txt_0_1>", "top_categories"] == ["comedy"]


def test_without_keywords_descriptors_use_categories_only():
    frame = describe_tokens({"u1": tokens_of(0)}, {"u1": Counter({"jazz": 1.0})}, keywords=None)

    assert frame.loc[0, "top_keywords"] == [] and frame.loc[0, "description"] == "jazz"


def test_description_has_no_repeats_and_a_fallback():
    assert describe(["Noir", "rain"], ["noir", "crime"]) == "noir, rain, crime"
    assert describe([], []) == "varied taste"


def test_categories_are_weighted_by_engagement(events, items):
    graph = build_interaction_graph(events, items)
    categories = user_categories(graph, items)

    # user-0000 likes cluster 0 (outdoor|hiking) and mostly engages with it
    assert categories["user-0000"].most_common(1)[0][0] in {"outdoor", "hiking"}
    assert set(categories) == set(graph.user_ids)
