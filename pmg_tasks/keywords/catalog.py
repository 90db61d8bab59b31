"""The catalog backend: keywords straight from item metadata, no model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from pmg_tasks.histories import item_keywords
from pmg_tasks.text_safety import clean_keyword, split_categories

BACKEND_ID = "catalog-v1"


def target_item_keywords(item: Mapping, limit: int = 8) -> list[str]:
    """An item's own words: its categories, then its attribute values."""
    words = [clean_keyword(c) for c in split_categories(item.get("categories"))]
    words += item_keywords(item.get("attributes"), limit=limit)
    return list(dict.fromkeys(w for w in words if w))[:limit]


def preference_keywords(history_items: Sequence[Mapping], limit: int) -> list[str]:
    """Keywords that recur across a user's history, stronger engagements counting more.

    `history_items` is ordered strongest first (as histories ranks them), so item i weighs n - i.
    """
    scores: Counter[str] = Counter()
    n = len(history_items)
    for position, item in enumerate(history_items):
        for word in target_item_keywords(item):
            scores[word] += n - position
    # Ties broken alphabetically so the same history always yields the same list.
    return [word for word, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]
