"""The user–item interaction graph that DPPMG's modal-specific GNN learns preferences on.

Nodes are users and items under stable id maps (sorted ids, so the same ids always get the same rows);
an edge says a user engaged with an item, weighted by how strongly (a purchase says more than a view) and,
optionally, how recently (a user's latest interactions say most about their taste now), summed over
repeats. Each modality view adds its own item features: the text view `txt` hashes an item's title and
categories into a fixed-width bag of words, which needs no downloaded model and is the same on every
machine; the image view `img` (pmg_tasks/preferences/images.py) exists only for items with an image.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# How much one interaction says about a preference; repeats add up.
EVENT_WEIGHTS: Mapping[str, float] = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 4.0}

TEXT_VIEW = "txt"
IMAGE_VIEW = "img"
# Width of the hashed bag of words; collisions are harmless at catalog vocabulary sizes this wide.
TEXT_BUCKETS = 256

_WORD = re.compile(r"[0-9a-z]+")


@dataclass(frozen=True)
class InteractionGraph:
    """A bipartite user–item graph under stable id maps.

    `user_ids[row]` / `item_ids[row]` name each node; edges are unique (user, item) pairs with the summed
    event weight. Nodes may have no edges (ids carried over from an earlier model that were not active in
    this window). `item_features[view]` is an array with one row per item; `item_in_view[view]` says
    which items a view can see (a view without an entry sees every item).
    """

    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    edge_user: np.ndarray
    edge_item: np.ndarray
    edge_weight: np.ndarray
    item_features: dict[str, np.ndarray] = field(default_factory=dict)
    item_in_view: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_edges(self) -> int:
        return len(self.edge_weight)

    def user_index(self) -> dict[str, int]:
        return {user: row for row, user in enumerate(self.user_ids)}

    def item_index(self) -> dict[str, int]:
        return {item: row for row, item in enumerate(self.item_ids)}

    def active_users(self) -> np.ndarray:
        """Rows of the users with at least one interaction in this graph, ascending."""
        return np.unique(self.edge_user)

    def view_edges(self, view: str) -> np.ndarray:
        """Positions of the edges `view` sees: those whose item is in the view."""
        if view not in self.item_in_view:
            return np.arange(self.num_edges)
        return np.flatnonzero(self.item_in_view[view][self.edge_item])

    def view_users(self, view: str) -> np.ndarray:
        """Rows of the users with at least one interaction `view` sees, ascending."""
        return np.unique(self.edge_user[self.view_edges(view)])

    def edge_index(self, view: str | None = None):
        """Both directions of every edge (of `view`, if named) on one node space (users first, then
        items), as PyG expects.

        Returns `(edge_index [2, 2E] long, edge_weight [2E] float)` torch tensors.
        """
        import torch

        edges = slice(None) if view is None else self.view_edges(view)
        users, weights = self.edge_user[edges], self.edge_weight[edges]
        items = self.edge_item[edges] + self.num_users
        source = np.concatenate([users, items])
        target = np.concatenate([items, users])
        weight = np.concatenate([weights, weights])
        return torch.tensor(np.stack([source, target]), dtype=torch.long), torch.tensor(
            weight, dtype=torch.float32
        )


def build_interaction_graph(
    events: pd.DataFrame,
    items: pd.DataFrame | None = None,
    *,
    known_user_ids: Iterable[str] = (),
    known_item_ids: Iterable[str] = (),
    recency_half_life: float = 0.0,
    image_features: Mapping[str, np.ndarray] | None = None,
) -> InteractionGraph:
    """The interaction graph of `events` (columns `user_id`, `item_id`, `event_type`, and `event_ts` for
    recency weighting).

    Edge weights follow `EVENT_WEIGHTS`, times `recency_weights` when `recency_half_life` > 0, summed over
    repeats. The rest is `interaction_graph`'s.

    Raises ValueError naming the columns that are missing or the event types that are unknown.
    """
    required = {"user_id", "item_id", "event_type"} | ({"event_ts"} if recency_half_life > 0 else set())
    missing = required - set(events.columns)
    if missing:
        raise ValueError(f"events are missing columns {sorted(missing)}; expected the events_valid schema")
    if events.empty:
        raise ValueError("events are empty: there is no interaction to build a preference graph from")
    unknown = sorted(set(events["event_type"].dropna().unique()) - set(EVENT_WEIGHTS))
    if unknown or events["event_type"].isna().any():
        raise ValueError(
            f"events have event types {unknown or [None]} outside {list(EVENT_WEIGHTS)}; "
            "validation should have quarantined them"
        )
    weight = events["event_type"].map(EVENT_WEIGHTS).to_numpy(dtype=np.float64)
    if recency_half_life > 0:
        weight = weight * recency_weights(events["user_id"], events["event_ts"], recency_half_life)
    return interaction_graph(
        events[["user_id", "item_id"]].assign(weight=weight),
        items,
        known_user_ids=known_user_ids,
        known_item_ids=known_item_ids,
        image_features=image_features,
    )


def interaction_graph(
    interactions: pd.DataFrame,
    items: pd.DataFrame | None = None,
    *,
    known_user_ids: Iterable[str] = (),
    known_item_ids: Iterable[str] = (),
    image_features: Mapping[str, np.ndarray] | None = None,
) -> InteractionGraph:
    """The graph of weighted `interactions` (columns `user_id`, `item_id`, `weight`), repeats summed.

    Node ids are the sorted union of the ids in `interactions` and the `known_*` ids (an earlier model's
    rows, so its tables can grow without reshuffling). With `items` (catalog rows with `item_id`, `title`,
    `categories`), the text view's item features are filled in; catalog items without interactions are not
    added to the graph. With `image_features` (item id -> vector, for the items that have an image), the
    image view is added when at least one of the graph's items has one.
    """
    if interactions["user_id"].isna().any() or interactions["item_id"].isna().any():
        raise ValueError("events have null user_id or item_id; validation should have quarantined them")
    user_ids = tuple(sorted(set(interactions["user_id"].astype(str)) | set(map(str, known_user_ids))))
    item_ids = tuple(sorted(set(interactions["item_id"].astype(str)) | set(map(str, known_item_ids))))
    edges = (
        pd.DataFrame(
            {
                "user": pd.Index(user_ids).get_indexer(interactions["user_id"].astype(str)),
                "item": pd.Index(item_ids).get_indexer(interactions["item_id"].astype(str)),
                "weight": interactions["weight"].to_numpy(dtype=np.float64),
            }
        )
        .groupby(["user", "item"], sort=True)["weight"]
        .sum()
        .reset_index()
    )
    features, in_view = {}, {}
    if items is not None:
        features[TEXT_VIEW] = item_text_features(items, item_ids)
    if image_features:
        has_image = np.array([item in image_features for item in item_ids], dtype=bool)
        if has_image.any():
            width = len(next(iter(image_features.values())))
            matrix = np.zeros((len(item_ids), width), dtype=np.float32)
            for row in np.flatnonzero(has_image):
                matrix[row] = image_features[item_ids[row]]
            features[IMAGE_VIEW], in_view[IMAGE_VIEW] = matrix, has_image
    return InteractionGraph(
        user_ids=user_ids,
        item_ids=item_ids,
        edge_user=edges["user"].to_numpy(dtype=np.int64),
        edge_item=edges["item"].to_numpy(dtype=np.int64),
        edge_weight=edges["weight"].to_numpy(dtype=np.float64),
        item_features=features,
        item_in_view=in_view,
    )


def recency_weights(user_ids: pd.Series, timestamps: pd.Series, half_life: float) -> np.ndarray:
    """0.5 ** (n / half_life) per interaction, n being how many of the user's interactions came after it.

    Counting interactions rather than days treats a user who comes back after a month like one who never
    left: what they did last is what they like now. Ties in time keep the input order.
    """
    frame = pd.DataFrame({"user": user_ids.to_numpy(), "ts": timestamps.to_numpy()})
    order = frame.sort_values(["user", "ts"], kind="stable")
    later = order.groupby("user", sort=False).cumcount(ascending=False)
    return np.power(0.5, later.reindex(frame.index).to_numpy(dtype=np.float64) / half_life)


def item_text_features(
    items: pd.DataFrame, item_ids: Iterable[str], buckets: int = TEXT_BUCKETS
) -> np.ndarray:
    """One unit-length hashed bag of words per id in `item_ids`, from the item's title and categories.

    Words hash to a bucket and a sign with BLAKE2 (Python's `hash` is salted per process), so the same
    text gives the same vector on every machine and every night. Ids missing from `items`, or with no
    words, get a zero row: the graph alone has to speak for them.
    """
    missing = {"item_id", "title", "categories"} - set(items.columns)
    if missing:
        raise ValueError(f"items are missing columns {sorted(missing)}; expected the items schema")
    catalog = items.assign(item_id=items["item_id"].astype(str)).drop_duplicates("item_id", keep="last")
    texts = dict(
        zip(catalog["item_id"], zip(catalog["title"], catalog["categories"], strict=True), strict=True)
    )
    ids = list(item_ids)
    features = np.zeros((len(ids), buckets), dtype=np.float32)
    for row, item_id in enumerate(ids):
        title, categories = texts.get(item_id, (None, None))
        for word in _text_words(title, categories):
            bucket, sign = _hashed_word(word, buckets)
            features[row, bucket] += sign
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)


def _text_words(title: object, categories: object) -> list[str]:
    words = _WORD.findall(str(title).lower()) if isinstance(title, str) else []
    if isinstance(categories, str):
        for category in filter(None, (c.strip().lower() for c in categories.split("|"))):
            # A whole category is one token too, so "home|garden" differs from a title saying "home garden".
            words.append(f"category:{category}")
            words.extend(_WORD.findall(category))
    return words


def _hashed_word(word: str, buckets: int) -> tuple[int, float]:
    digest = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
    return digest % buckets, 1.0 if (digest >> 63) & 1 else -1.0
