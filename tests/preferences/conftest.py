"""Synthetic clickstreams with clustered tastes: each user mostly engages with one cluster of items."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

CLUSTERS = {
    0: ("outdoor|hiking", ["trail", "boots", "tent", "backpack", "compass"]),
    1: ("kitchen|baking", ["whisk", "oven", "flour", "mixer", "tray"]),
    2: ("audio|music", ["headphones", "speaker", "vinyl", "guitar", "amplifier"]),
    3: ("beauty|skincare", ["serum", "cream", "mask", "cleanser", "toner"]),
}
EVENT_TYPES = ["view", "click", "add_to_cart", "purchase"]


def synthetic_items(n_items: int = 40, first: int = 0) -> pd.DataFrame:
    """Items `item-0000..`, cluster = index % 4, titles from that cluster's words."""
    rows = []
    for index in range(first, first + n_items):
        categories, words = CLUSTERS[index % len(CLUSTERS)]
        rows.append(
            {
                "item_id": f"item-{index:04d}",
                "title": f"{words[index % 5]} {words[(index // 4) % 5]} model {index}",
                "categories": categories,
                "description": "",
                "attributes": json.dumps({"cluster": index % len(CLUSTERS)}),
                "image_uri": None,
                "updated_at": pd.Timestamp("2026-11-01"),
            }
        )
    return pd.DataFrame(rows)


def synthetic_events(
    ds: str,
    n_users: int = 50,
    n_items: int = 40,
    *,
    first_user: int = 0,
    seed: int = 0,
    per_user: int = 6,
    noise: float = 0.1,
) -> pd.DataFrame:
    """Events of users `user-<first_user>..`: user u likes cluster u % 4, with `noise` random clicks."""
    rng = np.random.default_rng(seed + first_user)
    by_cluster = {c: [i for i in range(n_items) if i % len(CLUSTERS) == c] for c in CLUSTERS}
    rows = []
    start = pd.Timestamp(ds)
    for user in range(first_user, first_user + n_users):
        liked = rng.choice(by_cluster[user % len(CLUSTERS)], size=per_user, replace=False)
        chosen = list(liked)
        chosen += [int(i) for i in rng.integers(0, n_items, size=rng.binomial(per_user, noise))]
        for item in chosen:
            for _ in range(int(rng.integers(1, 3))):
                rows.append(
                    {
                        "user_id": f"user-{user:04d}",
                        "item_id": f"item-{item:04d}",
                        "event_type": EVENT_TYPES[int(rng.integers(0, 4))],
                        "dwell_seconds": float(rng.uniform(1, 60)),
                    }
                )
    events = pd.DataFrame(rows)
    events.insert(0, "event_id", [f"{ds}-{k:06d}" for k in range(len(events))])
    events.insert(3, "session_id", events["user_id"] + f"-{ds}")
    events.insert(5, "event_ts", start + pd.to_timedelta(np.arange(len(events)), unit="s"))
    return events


def second_night_events(ds: str, new_users: int = 5, new_items: int = 4) -> pd.DataFrame:
    """The first night's users doing the same again, plus `new_users` users who also engage with
    `new_items` items never seen before (`item-0040..`)."""
    returning = synthetic_events(ds)
    newcomers = synthetic_events(ds, n_users=new_users, first_user=50)
    first_new_item = 40
    extra = newcomers.head(new_items).copy()
    extra["item_id"] = [f"item-{first_new_item + k:04d}" for k in range(new_items)]
    extra["event_type"] = "purchase"
    extra["event_id"] = extra["event_id"] + "-new"
    return pd.concat([returning, newcomers, extra], ignore_index=True)


@pytest.fixture
def items() -> pd.DataFrame:
    return synthetic_items()


@pytest.fixture
def events() -> pd.DataFrame:
    return synthetic_events("2026-11-20")


# Factories as fixtures, so test modules never import this file by name.


@pytest.fixture
def make_items():
    return synthetic_items


@pytest.fixture
def make_events():
    return synthetic_events


@pytest.fixture
def make_second_night():
    return second_night_events


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # These graphs are tiny: intra-op threads buy nothing, and on a busy 2-core runner their spinning
    # OpenMP workers made the tests several times slower.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
