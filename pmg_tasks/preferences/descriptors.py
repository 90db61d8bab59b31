"""Preference tokens in words: what the users behind each code like, so a token means something to a
person and can be rendered into a prompt.

A code is described by the keywords (from the keyword stage) of its users and the categories of the items
they engaged with. Words are ranked by how typical they are of the code: share_in_code^2 / share_overall,
which prefers words most of the code's users share and that are rarer elsewhere ("film-noir" over "drama"
when every code likes drama); words no commoner in the code than overall are left out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from pmg_tasks.preferences.graph import InteractionGraph

TOP_WORDS = 5
# A word only one user of a code has speaks for that user, not for the code (MovieLens tags: one user's
# "cambodia" was the top keyword of a 109-user code before this).
MIN_USERS = 2
DESCRIPTOR_COLUMNS = (
    "token", "view", "level", "code", "users", "top_keywords", "top_categories", "description"
)  # fmt: skip


def user_categories(graph: InteractionGraph, items: pd.DataFrame) -> dict[str, Counter]:
    """User id -> how much of their engagement (summed edge weight) went to each item category."""
    import pandas as pd

    catalog = items.assign(item_id=items["item_id"].astype(str)).drop_duplicates("item_id", keep="last")
    categories = catalog.set_index("item_id")["categories"].dropna().str.split("|").explode().str.strip()
    categories = categories[categories != ""].rename("category")
    edges = pd.DataFrame(
        {
            "user": graph.edge_user,
            "item_id": pd.Index(graph.item_ids)[graph.edge_item],
            "weight": graph.edge_weight,
        }
    ).join(categories, on="item_id", how="inner")
    totals = edges.groupby(["user", "category"])["weight"].sum()
    per_user: dict[str, Counter] = {user: Counter() for user in graph.user_ids}
    for (user, category), weight in totals.items():
        per_user[graph.user_ids[user]][category] = float(weight)
    return per_user


def describe_tokens(
    user_tokens: Mapping[str, Sequence[tuple[str, str, int, int]]],
    categories: Mapping[str, Counter],
    keywords: Mapping[str, Sequence[str]] | None = None,
    top: int = TOP_WORDS,
) -> pd.DataFrame:
    """One row per token in use: `DESCRIPTOR_COLUMNS`.

    `user_tokens` maps a user id to their `(token, view, level, code)` tuples; `categories` maps a user id to
    their category engagement (`user_categories`); `keywords` maps a user id to their preference keywords,
    or is None where the keyword stage has not run, and the descriptors use categories only.
    """
    import pandas as pd

    members: dict[tuple[str, str, int, int], list[str]] = {}
    for user, tokens in user_tokens.items():
        for token in tokens:
            members.setdefault(tuple(token), []).append(user)
    users = list(user_tokens)
    overall_keywords = _shares(keywords.get(u, ()) for u in users) if keywords is not None else {}
    overall_categories = _weighted_shares(categories.get(u, Counter()) for u in users)

    rows = []
    for (token, view, level, code), behind in sorted(
        members.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3])
    ):
        # Codes of one user can only speak for that user.
        support = min(MIN_USERS, len(behind)) / len(behind)
        top_keywords = (
            _typical(_shares(keywords.get(u, ()) for u in behind), overall_keywords, top, support)
            if keywords is not None
            else []
        )
        top_categories = _typical(
            _weighted_shares(categories.get(u, Counter()) for u in behind), overall_categories, top
        )
        rows.append(
            {
                "token": token,
                "view": view,
                "level": level,
                "code": code,
                "users": len(behind),
                "top_keywords": top_keywords,
                "top_categories": top_categories,
                "description": describe(top_keywords, top_categories),
            }
        )
    return pd.DataFrame(rows, columns=list(DESCRIPTOR_COLUMNS))


def describe(top_keywords: Sequence[str], top_categories: Sequence[str], words: int = 6) -> str:
    """A short phrase for a prompt: the code's most typical keywords, then categories, no repeats."""
    chosen: list[str] = []
    for word in [*top_keywords[:3], *top_categories, *top_keywords[3:]]:
        word = word.strip().lower()
        if word and word not in chosen:
            chosen.append(word)
    return ", ".join(chosen[:words]) or "varied taste"


def _shares(word_lists: Iterable[Sequence[str]]) -> dict[str, float]:
    # Per user, a word counts once: the share of users who have it.
    counts: Counter = Counter()
    users = 0
    for words in word_lists:
        users += 1
        counts.update({str(w).strip().lower() for w in words if str(w).strip()})
    return {word: n / users for word, n in counts.items()} if users else {}


def _weighted_shares(counters: Iterable[Counter]) -> dict[str, float]:
    # Each user's engagement is normalised first, so one very active user does not speak for the code.
    total: Counter = Counter()
    users = 0
    for counter in counters:
        users += 1
        mass = sum(counter.values())
        for word, value in counter.items():
            total[word] += value / mass
    return {word: value / users for word, value in total.items()} if users else {}


def _typical(
    inside: Mapping[str, float], overall: Mapping[str, float], top: int, support: float = 0.0
) -> list[str]:
    # Only words commoner inside the code than overall describe it; a code as varied as everyone falls
    # back to its most frequent words. `support`: the least share of the code's users a word needs.
    scored = [
        (share * share / overall[word], share > overall[word], word)
        for word, share in inside.items()
        if share >= support - 1e-12
    ]
    chosen = [entry for entry in scored if entry[1]] or scored
    return [word for _, _, word in sorted(chosen, key=lambda entry: (-entry[0], entry[2]))[:top]]
