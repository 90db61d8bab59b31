"""Item images: which object of the store an item's `image_uri` names, and their bytes.

An item has an image when its `image_uri` names an object in the store: a key (`catalog/images/a.png`) or
the store's own URL of one (`s3://bucket/prefix/catalog/images/a.png`, `file:///...`). Anything else (an
http URL, a missing object, a key that would leave the store) counts as no image: a batch task reads no
network, and an item without an image simply goes without.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from pmg_tasks.store import ObjectStore


def image_key_of(uri: str, store: ObjectStore) -> str | None:
    """The store key `uri` names, or None when it names nothing in this store."""
    if "://" not in uri:
        return uri.lstrip("/") or None
    root_url = store.url("_")[: -len("_")]
    return uri[len(root_url) :] if uri.startswith(root_url) and len(uri) > len(root_url) else None


def item_image_keys(items: pd.DataFrame, store: ObjectStore, item_ids: Iterable[str] | None = None) -> dict[str, str]:
    """Item id -> the store key of its image, for the items (of `item_ids`, default all) whose `image_uri`
    names an object that exists."""
    if "image_uri" not in items.columns:
        return {}
    named = items.dropna(subset=["image_uri"]).drop_duplicates("item_id", keep="last")
    wanted = None if item_ids is None else set(item_ids)
    keys: dict[str, str] = {}
    for item_id, uri in zip(named["item_id"].astype(str), named["image_uri"], strict=True):
        if wanted is not None and item_id not in wanted:
            continue
        key = image_key_of(str(uri), store)
        try:
            if key is not None and store.exists(key):
                keys[item_id] = key
        except ValueError:  # a key that would leave the store, e.g. "../x.png": not an image of ours
            continue
    return keys


def read_item_images(
    items: pd.DataFrame, store: ObjectStore, item_ids: Iterable[str] | None = None
) -> dict[str, bytes]:
    """Item id -> the bytes of its image, for the items `item_image_keys` finds."""
    return {item_id: store.get_bytes(key) for item_id, key in item_image_keys(items, store, item_ids).items()}
