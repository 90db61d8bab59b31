"""The keyword cache: one small JSON object per extraction, in the object store, keyed by what made it.

    cache/keywords/<kind>/<scenario>/<model>/<prompt version>/<content hash>.json

kind is `users` (content hash: the history hash) or `items` (a hash of the item's title, categories and
description). A new model, a new prompt or an edited scenario is a new folder, so nothing stale is served.
Reads and writes go out `concurrency` at a time: on S3 each is a round trip.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

from pmg_tasks.keywords.extraction import Extraction
from pmg_tasks.layout import keyword_cache_key
from pmg_tasks.store import ObjectStore

log = logging.getLogger(__name__)


def path_segment(name: str) -> str:
    """A model path or hub id as one readable, collision-free key segment."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[-48:] or "model"
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def item_content_hash(item: Mapping) -> str:
    """Changes when anything the target prompt shows changes."""
    content = [str(item.get(k) or "") for k in ("title", "categories", "description")]
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]


class KeywordCache:
    def __init__(self, store: ObjectStore, scenario: str, prompt_version: str, model_id: str, concurrency: int = 8):
        self.store = store
        self.scenario = scenario
        self.prompt_version = prompt_version
        self.model = path_segment(model_id)
        self.concurrency = concurrency

    def key(self, kind: str, content_hash: str) -> str:
        return keyword_cache_key(kind, content_hash, self.prompt_version, self.model, self.scenario)

    def get_many(self, kind: str, hashes: Iterable[str]) -> dict[str, Extraction]:
        """The cached extractions among `hashes`; a missing or unreadable entry is a miss."""
        found = self.get_json_many(kind, hashes)
        return {h: Extraction.from_json(value) for h, value in found.items() if isinstance(value, dict)}

    def put_many(self, kind: str, extractions: Mapping[str, Extraction]) -> int:
        return self.put_json_many(kind, {h: e.to_json() for h, e in extractions.items()})

    def get_json_many(self, kind: str, hashes: Iterable[str]) -> dict[str, object]:
        """The cached JSON values among `hashes` (any kind of entry: keywords, headlines)."""

        def get(content_hash: str) -> object | None:
            try:
                return json.loads(self.store.get_bytes(self.key(kind, content_hash)))
            except KeyError:
                return None
            except ValueError as error:
                log.warning("unreadable cache entry %s (%s): asking again", self.key(kind, content_hash), error)
                return None

        hashes = list(dict.fromkeys(hashes))
        with ThreadPoolExecutor(self.concurrency) as pool:
            found = dict(zip(hashes, pool.map(get, hashes), strict=True))
        return {h: value for h, value in found.items() if value is not None}

    def put_json_many(self, kind: str, values: Mapping[str, object]) -> int:
        def put(item: tuple[str, object]) -> None:
            self.store.put_bytes(self.key(kind, item[0]), json.dumps(item[1], sort_keys=True).encode())

        with ThreadPoolExecutor(self.concurrency) as pool:
            list(pool.map(put, values.items()))
        return len(values)
