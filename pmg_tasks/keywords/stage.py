"""Stage 4, keywords, in three steps the DAG maps over user shards:

    plan_keyword_shards     how many shards tonight's users make              (task keyword_shards)
    extract_keyword_shard   one shard: cache lookup, LLM for the misses only  (task keywords, mapped, LLM pool)
    merge_keywords          keywords.parquet, item_keywords.parquet, stats    (task merge_keywords)

`extract_keywords` runs all three in-process. Every user ends with at least one keyword, and every keyword is
normalised, capped, deduplicated and clear of the active campaigns' denylists. The chain for a user is: the
LLM's integrated keywords, else the catalog's keywords for their history, else generic words; `source` says
which one won.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pmg_tasks.keywords import catalog
from pmg_tasks.keywords.extraction import CACHEABLE, Extraction, Usage, extract_preferences, extract_targets
from pmg_tasks.keywords.parsing import normalise
from pmg_tasks.layout import (
    keyword_plan_key,
    keyword_shard_key,
    keyword_shard_stats_key,
    keyword_vocabulary_key,
    run_key,
)
from pmg_tasks.store import open_store, read_frame, read_json, write_json, write_table
from pmg_tasks.text_safety import Denylist

if TYPE_CHECKING:

    from pmg_tasks.keywords.backends import TextGenerator
    from pmg_tasks.settings import Settings

log = logging.getLogger(__name__)

GENERIC_KEYWORDS = ("popular", "bestseller", "featured", "classic", "trending")
USER_COLUMNS = ["user_id", "history_hash", "preference_keywords", "backend", "source", "attribute_keywords"]
ITEM_COLUMNS = ["item_id", "keywords", "backend", "source"]
# Counts each shard reports and the merge sums.
COUNTS = ("users", "unique_histories", "items", "llm_items", "model_calls", "failed_calls", "prompt_tokens",
          "completion_tokens", "user_cache_hits", "user_cache_misses", "item_cache_hits", "item_cache_misses",
          "fallbacks", "repaired", "item_fallbacks")


def plan_keyword_shards(settings: Settings, ds: str) -> list[int]:
    """Cut tonight's users into shards of about `keywords.users_per_shard`; return the indices to map over."""
    import pyarrow.parquet as pq

    store = open_store(settings)
    with store.reading(run_key(ds, "histories.parquet")) as path:
        users = pq.ParquetFile(path).metadata.num_rows
    options = settings.keywords
    per_shard = max(options.users_per_shard, math.ceil(users / options.max_shards))
    shards = max(1, math.ceil(users / per_shard))
    # A rerun may plan fewer shards than the last attempt: stale shard outputs must not linger.
    store.delete_prefix(run_key(ds, "keywords/"))
    # The catalog's title statistics, once for the whole stage: every shard reads items against them.
    vocabulary = _catalog_vocabulary(store, ds)
    store.put_bytes(keyword_vocabulary_key(ds), vocabulary.to_json().encode())
    write_json(store, keyword_plan_key(ds), {"users": users, "users_per_shard": per_shard, "shards": shards})
    log.info("keywords for %d users in %d shards of up to %d", users, shards, per_shard)
    return list(range(shards))


def extract_keyword_shard(settings: Settings, ds: str, index: int, generator: TextGenerator | None = None) -> dict:
    """Keywords for the users (and target items) of shard `index`; the model sees only cache misses.

    `generator` lets a caller reuse a loaded model across shards; by default one is opened when needed."""
    started = time.monotonic()
    store = open_store(settings)
    plan = read_json(store, keyword_plan_key(ds))
    per_shard, shards = plan["users_per_shard"], plan["shards"]
    histories = read_frame(store, run_key(ds, "histories.parquet")).iloc[index * per_shard : (index + 1) * per_shard]
    items = read_frame(store, run_key(ds, "items.parquet"))
    item_rows = {row["item_id"]: row for row in items.to_dict("records")}
    vocabulary = (
        catalog.CatalogVocabulary.from_json(store.get_bytes(keyword_vocabulary_key(ds)))
        if store.exists(keyword_vocabulary_key(ds))
        else catalog.CatalogVocabulary.from_items(item_rows.values())
    )
    campaigns = _active_campaigns(settings, ds)
    denylist = sorted({word for c in campaigns for word in c.denylist})
    targets = {item_id for c in campaigns for item_id in c.target_items if item_id in item_rows}
    # Items are dealt round-robin, so every shard carries a share of the catalog and of the targets.
    shard_items = [item_id for position, item_id in enumerate(items["item_id"]) if position % shards == index]

    counts: Counter[str] = Counter(
        users=len(histories), unique_histories=histories["history_hash"].nunique(), items=len(shard_items)
    )
    user_results: dict[str, Extraction] = {}
    item_results: dict[str, Extraction] = {}
    backend_name = catalog.BACKEND_ID
    if settings.keyword_backend != "catalog":
        extractor = _LLMKeywords(settings, store, generator)
        llm_items = sorted(i for i in shard_items if i in targets)
        try:
            user_results = extractor.users(dict(zip(histories["history_hash"], histories["history_text"],
                                                    strict=True)))
            item_results = extractor.items({i: item_rows[i] for i in llm_items})
        finally:
            extractor.close()
        extractor.check_failures()
        counts.update(extractor.counts, llm_items=len(llm_items))
        backend_name = extractor.backend_name

    limit = settings.keywords_per_user
    users = []
    for history in histories.itertuples(index=False):
        extraction = user_results.get(history.history_hash)
        history_items = [item_rows[i] for i in history.item_ids if i in item_rows]
        words, source = _first_allowed(
            [
                ("llm" if extraction and extraction.status == "ok" else "llm_repaired",
                 extraction.keywords if extraction else []),
                ("catalog" if extraction is None else "catalog_fallback",
                 catalog.preference_keywords(history_items, limit, vocabulary)),
                ("generic", list(GENERIC_KEYWORDS)),
            ],
            denylist, limit, what=f"user {history.user_id}",
        )
        counts["fallbacks"] += extraction is not None and not source.startswith("llm")
        counts["repaired"] += source == "llm_repaired"
        users.append(
            {
                "user_id": history.user_id,
                "history_hash": history.history_hash,
                "preference_keywords": words,
                "backend": backend_name if source.startswith("llm") else catalog.BACKEND_ID,
                "source": source,
                "attribute_keywords": json.dumps(extraction.attributes if extraction else {}, sort_keys=True),
            }
        )
    target_rows = []
    for item_id in shard_items:
        extraction = item_results.get(item_id)
        words, source = _first_allowed(
            [
                ("llm", extraction.keywords if extraction else []),
                ("catalog" if extraction is None else "catalog_fallback",
                 catalog.target_item_keywords(item_rows[item_id], limit, vocabulary)),
                ("generic", list(GENERIC_KEYWORDS)),
            ],
            denylist, limit, what=f"item {item_id}",
        )
        counts["item_fallbacks"] += extraction is not None and source != "llm"
        target_rows.append({"item_id": item_id, "keywords": words,
                            "backend": backend_name if source == "llm" else catalog.BACKEND_ID, "source": source})

    import pandas as pd

    write_table(store, keyword_shard_key(ds, "users", index), pd.DataFrame(users, columns=USER_COLUMNS))
    write_table(store, keyword_shard_key(ds, "items", index), pd.DataFrame(target_rows, columns=ITEM_COLUMNS))
    stats = {name: int(counts[name]) for name in COUNTS} | {"seconds": round(time.monotonic() - started, 3)}
    write_json(store, keyword_shard_stats_key(ds, index), stats)
    log.info(
        "keyword shard %d/%d: %d users (%d unique histories), %d items; cache hits %d, misses %d (users) and "
        "%d, %d (items); %d model calls (%d unanswered); %d users fell back to the catalog, %d repaired",
        index + 1, shards, stats["users"], stats["unique_histories"], stats["items"], stats["user_cache_hits"],
        stats["user_cache_misses"], stats["item_cache_hits"], stats["item_cache_misses"], stats["model_calls"],
        stats["failed_calls"], stats["fallbacks"], stats["repaired"],
    )
    return {"shard": index, **{k: stats[k] for k in ("users", "model_calls", "user_cache_hits", "user_cache_misses")}}


def merge_keywords(settings: Settings, ds: str) -> dict:
    """Write `keywords.parquet`, `item_keywords.parquet` and `stats/keywords.json` from every shard."""
    import pandas as pd

    store = open_store(settings)
    shards = read_json(store, keyword_plan_key(ds))["shards"]
    missing = [i for i in range(shards) if not store.exists(keyword_shard_stats_key(ds, i))]
    if missing:
        raise RuntimeError(f"keyword shards {missing} of {shards} have no output for {ds}: rerun the keywords task")
    users = pd.concat([read_frame(store, keyword_shard_key(ds, "users", i)) for i in range(shards)], ignore_index=True)
    items = pd.concat([read_frame(store, keyword_shard_key(ds, "items", i)) for i in range(shards)], ignore_index=True)
    write_table(store, run_key(ds, "keywords.parquet"), users)
    write_table(store, run_key(ds, "item_keywords.parquet"), items)

    per_shard = [read_json(store, keyword_shard_stats_key(ds, i)) for i in range(shards)]
    totals = {name: sum(int(s.get(name, 0)) for s in per_shard) for name in COUNTS}
    totals["cache_hits"] = totals["user_cache_hits"] + totals["item_cache_hits"]
    totals["cache_misses"] = totals["user_cache_misses"] + totals["item_cache_misses"]
    stats = {
        "backend": settings.keyword_backend,
        "shards": shards,
        **totals,
        "sources": {str(k): int(v) for k, v in users["source"].value_counts().sort_index().items()},
    }
    if settings.keyword_backend != "catalog":
        stats |= _LLMKeywords.describe(settings)
    write_json(store, run_key(ds, "stats/keywords.json"), stats)
    log.info(
        "keywords for %d users and %d items (backend %s): cache hits %d, misses %d, %d model calls, "
        "%d fallbacks to the catalog", len(users), len(items), settings.keyword_backend, totals["cache_hits"],
        totals["cache_misses"], totals["model_calls"], totals["fallbacks"],
    )
    return {"users": len(users), "items": len(items), "backend": settings.keyword_backend,
            "model_calls": totals["model_calls"], "cache_hits": totals["cache_hits"],
            "cache_misses": totals["cache_misses"]}


def extract_keywords(settings: Settings, ds: str, generator: TextGenerator | None = None) -> dict:
    """The whole stage in-process: plan, every shard (sharing one loaded model), merge."""
    opened = None
    if generator is None and settings.keyword_backend != "catalog":
        opened = generator = _LazyGenerator(settings)
    try:
        for index in plan_keyword_shards(settings, ds):
            extract_keyword_shard(settings, ds, index, generator=generator)
    finally:
        if opened is not None:
            opened.close()
    return merge_keywords(settings, ds)


class _LLMKeywords:
    """The cache in front of the model: look up every unique history and target item, extract the misses in
    one batch per step, store what is deterministic."""

    def __init__(self, settings: Settings, store, generator: TextGenerator | None):
        from pmg_tasks.keywords.cache import KeywordCache

        self.settings = settings
        description = self.describe(settings)
        self.scenario_name, self.model_id = description["scenario"], description["model_id"]
        self.cache = KeywordCache(store, self.scenario_name, description["prompt_version"],
                                  description["model_id"], settings.keywords.concurrency)
        self.generator = generator
        self.own_generator = generator is None
        self.usage = Usage()
        self.counts: Counter[str] = Counter()

    @staticmethod
    def describe(settings: Settings) -> dict:
        from pmg_tasks.keywords.backends import model_id_of
        from pmg_tasks.keywords.prompts import prompt_version
        from pmg_tasks.keywords.scenario import load_scenario

        scenario = load_scenario(settings.keywords.scenario)
        version = prompt_version(scenario, settings.keywords_per_user, settings.keywords.max_new_tokens,
                                 settings.keywords.prompt_version)
        return {"scenario": scenario.name, "prompt_version": version, "model_id": model_id_of(settings)}

    @property
    def backend_name(self) -> str:
        """What the keywords table names as their maker: the same on a night of cache hits."""
        return f"{self.settings.keyword_backend}:{self.model_id}"

    def _generator(self) -> TextGenerator:
        if self.generator is None:
            from pmg_tasks.keywords.backends import open_generator

            self.generator = open_generator(self.settings)
        return self.generator

    def users(self, texts: Mapping[str, str]) -> dict[str, Extraction]:
        from pmg_tasks.keywords.scenario import load_scenario

        found = self.cache.get_many("users", texts)
        misses = [h for h in texts if h not in found]
        self.counts.update(user_cache_hits=len(found), user_cache_misses=len(misses))
        if misses:
            options = self.settings.keywords
            fresh = extract_preferences(
                self._generator(), load_scenario(self.scenario_name), [texts[h] for h in misses],
                self.settings.keywords_per_user, options.max_new_tokens, self.usage,
            )
            found |= self._store("users", dict(zip(misses, fresh, strict=True)))
        return found

    def items(self, rows: Mapping[str, Mapping]) -> dict[str, Extraction]:
        from pmg_tasks.keywords.cache import item_content_hash
        from pmg_tasks.keywords.scenario import load_scenario

        hashes = {item_id: item_content_hash(row) for item_id, row in rows.items()}
        found = self.cache.get_many("items", hashes.values())
        misses = sorted({h for h in hashes.values() if h not in found})
        self.counts.update(item_cache_hits=len(set(hashes.values())) - len(misses), item_cache_misses=len(misses))
        if misses:
            first: dict[str, str] = {}  # items with the same content share one request
            for item_id, content_hash in sorted(hashes.items()):
                first.setdefault(content_hash, item_id)
            fresh = extract_targets(
                self._generator(), load_scenario(self.scenario_name), [rows[first[h]] for h in misses],
                self.settings.keywords_per_user, self.settings.keywords.max_new_tokens, self.usage,
            )
            found |= self._store("items", dict(zip(misses, fresh, strict=True)))
        return {item_id: found[h] for item_id, h in hashes.items() if h in found}

    def _store(self, kind: str, fresh: dict[str, Extraction]) -> dict[str, Extraction]:
        """Cache what another attempt would answer the same way; return what is usable tonight."""
        self.cache.put_many(kind, {h: e for h, e in fresh.items() if e.status in CACHEABLE})
        return fresh

    def close(self) -> None:
        self.counts.update(model_calls=self.usage.model_calls, failed_calls=self.usage.failed_calls,
                           prompt_tokens=self.usage.prompt_tokens, completion_tokens=self.usage.completion_tokens)
        if self.own_generator and self.generator is not None:
            self.generator.close()

    def check_failures(self) -> None:
        """Unanswered requests beyond the threshold fail the task, so Airflow retries it later; what was
        answered is cached already, so the retry asks only for the rest."""
        usage = self.usage
        # What the cache answered counts as answered: on a rerun only the requests that failed before are
        # asked again, and all of them failing once more is still the same small share of the shard.
        cached = self.counts["user_cache_hits"] + self.counts["item_cache_hits"]
        asked = usage.model_calls + cached
        if usage.model_calls and usage.failed_calls / asked > self.settings.keywords.max_failed_fraction:
            raise RuntimeError(
                f"{usage.failed_calls} of {asked} keyword requests got no answer from {self.backend_name} "
                f"({cached} answered by the cache; more than keywords.max_failed_fraction="
                f"{self.settings.keywords.max_failed_fraction}); first errors: {usage.errors}"
            )


class _LazyGenerator:
    """Opens the configured generator on first use, so a night of cache hits never loads a model."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.inner: TextGenerator | None = None

    @property
    def name(self) -> str:
        return self.inner.name if self.inner else self.settings.keyword_backend

    def generate(self, requests):
        if self.inner is None:
            from pmg_tasks.keywords.backends import open_generator

            self.inner = open_generator(self.settings)
        return self.inner.generate(requests)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


def _first_allowed(
    candidates: Sequence[tuple[str, list[str]]], denylist: list[str], limit: int, what: str
) -> tuple[list[str], str]:
    """The first candidate list with anything left after normalising and the denylist."""
    denied = Denylist(denylist)
    for source, words in candidates:
        kept = denied.keep(normalise(words))[:limit]
        if kept:
            return kept, source
    raise ValueError(f"the active campaigns' denylists {denylist} leave no keyword at all for {what}")


def _catalog_vocabulary(store, ds: str) -> catalog.CatalogVocabulary:
    from pmg_tasks.store import read_table

    items = read_table(store, run_key(ds, "items.parquet")).select(["title", "attributes"])
    return catalog.CatalogVocabulary.from_items(items.to_pylist())


def _active_campaigns(settings: Settings, ds: str) -> list:
    """Tonight's campaigns, for their denylists and target items; none when there is no campaigns file yet
    (the plan stage is the one that insists on it)."""
    from pathlib import Path

    from pmg_tasks.campaigns import active_campaigns

    if not Path(settings.campaigns_file).is_file():
        log.warning("no campaigns file at %s: no denylist and no target items tonight", settings.campaigns_file)
        return []
    return active_campaigns(settings.campaigns_file, ds)
