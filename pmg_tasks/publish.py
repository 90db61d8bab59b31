"""Stage 8, publish: manifests per campaign, the run report, and the success marker, written last.

Recommender teams read `manifests/ds=.../campaign=.../manifest.parquet` once `_SUCCESS` exists; a run that
fails half-way never leaves a `_SUCCESS` next to manifests it did not finish. A manifest has one row per
(user, target item, rank): many users of a segment may share one creative, which is stored once.

The run date is the `ds=` partition of the path, not a column of the file: every hive-aware reader (pandas,
pyarrow, DuckDB, Spark) adds it when reading the root, and Spark refuses a column that is both.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import TYPE_CHECKING

from pmg_tasks.generate.safety import safety_counts
from pmg_tasks.layout import (
    creatives_prefix,
    manifest_key,
    report_key,
    run_key,
    shard_result_key,
    success_key,
)
from pmg_tasks.report import write_report
from pmg_tasks.store import (
    ObjectStore,
    open_store,
    read_frame,
    read_json,
    read_table,
    write_json,
    write_table,
)

if TYPE_CHECKING:
    import pandas as pd

    from pmg_tasks.settings import Settings

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "campaign_id", "user_id", "item_id", "rank", "creative_id", "image_key", "image_uri", "segment_id",
    "personalization", "preference_tokens", "seed", "d_p", "d_t", "consistency", "z", "alpha",
    "consistency_weight", "headline", "prompt", "negative_prompt", "preference_keywords", "target_keywords",
    "signature", "diffusion_model", "clip_model", "token_embeddings", "safety",
]  # fmt: skip
GENERATED_COLUMNS = [
    "signature", "user_id", "rank", "creative_id", "image_key", "seed", "d_p", "d_t", "consistency", "z",
    "diffusion_model", "clip_model", "token_embeddings", "safety",
]  # fmt: skip


def assemble_manifest(
    requests: pd.DataFrame, generations: pd.DataFrame, headlines: pd.DataFrame, generated: pd.DataFrame,
    store: ObjectStore,
) -> pd.DataFrame:
    """One row per planned creative: every (campaign, user, target item) request joined to the creatives its
    user chose from the request's generation, ranked. Requests the safety checks blocked (rank-0 rows of
    the shard results) have no rows."""
    import pandas as pd

    blocked = generated.loc[generated["rank"] == 0, ["signature", "user_id"]]
    generated = generated[generated["rank"] > 0]
    chosen = generated.groupby(["signature", "user_id"]).size()
    wanted = requests.set_index(["signature", "user_id"])["variants"]
    wanted = wanted[~wanted.index.isin(pd.MultiIndex.from_frame(blocked))]
    short = wanted[chosen.reindex(wanted.index, fill_value=0).to_numpy() < wanted.to_numpy()]
    if len(short):
        signature, user_id = short.index[0]
        raise RuntimeError(
            f"{len(short)} planned (generation, user) pairs have fewer creatives than planned (e.g. user "
            f"{user_id} of {signature}): a generate task did not finish; clear and rerun the failed generate tasks"
        )
    texts = generations[["signature", "prompt", "negative_prompt", "preference_tokens", "target_keywords"]]
    manifest = (
        requests.drop(columns=["preference_text", "variants"])
        .merge(generated[GENERATED_COLUMNS], on=["signature", "user_id"], how="inner", validate="one_to_many")
        .merge(texts, on="signature", how="left", validate="many_to_one")
        .merge(headlines[["signature", "headline"]], on="signature", how="left", validate="many_to_one")
    )
    manifest["image_uri"] = manifest["image_key"].map(store.url)
    manifest = manifest.sort_values(["campaign_id", "user_id", "item_id", "rank"], ignore_index=True)
    return manifest[MANIFEST_COLUMNS]


def publish_run(
    settings: Settings, ds: str, campaigns: Collection[str] | None = None, held: Collection[str] = ()
) -> dict:
    """Write the manifests, the report and `_SUCCESS`; return where they are. `campaigns` publishes only
    those (an approved campaign, or a run of one campaign): the others' manifests stay as they are. `held`
    publishes all but those (campaigns waiting for review): theirs are left alone. The report shows every
    planned campaign, held ones too, each with its state."""
    store = open_store(settings)
    # First take the marker away: readers must not trust this date while it is being rewritten.
    store.delete_prefix(success_key(ds))

    requests = read_frame(store, run_key(ds, "requests.parquet"))
    generations = read_frame(store, run_key(ds, "generations.parquet"))
    headlines = read_frame(store, run_key(ds, "headlines.parquet"))
    generated = _generated(store, ds)
    planned = assemble_manifest(requests, generations, headlines, generated, store)
    chosen = planned["campaign_id"].isin(list(campaigns)) if campaigns is not None else ~planned["campaign_id"].isin(list(held))
    manifest = planned[chosen].reset_index(drop=True)
    safety = safety_counts(generated)

    manifests = {}
    for campaign_id, rows in manifest.groupby("campaign_id", sort=True):
        manifests[campaign_id] = write_table(store, manifest_key(ds, campaign_id), rows.reset_index(drop=True))
    for key in store.list_keys(f"manifests/ds={ds}/"):
        # A campaign dropped since the last attempt at this date must not keep an old manifest.
        if key.endswith("manifest.parquet") and key not in manifests.values():
            if (campaigns is None or _campaign_of(key) in campaigns) and _campaign_of(key) not in held:
                store.delete_prefix(key)
            else:
                manifests[_campaign_of(key)] = key

    stats = _collect_stats(store, ds)
    stats["manifest"] = {
        "rows": len(manifest),
        # Every campaign published for the date so far: tonight's, and those an earlier call published.
        "published_rows": len(manifest) + sum(
            read_table(store, k).num_rows for c, k in manifests.items() if c not in set(manifest["campaign_id"])
        ),
        "campaigns": sorted(manifests),
        "creatives": int(manifest["creative_id"].nunique()),
        "users": int(manifest["user_id"].nunique()),
        "safety": safety,
    }
    write_report(settings, store, ds, planned, stats, published=sorted(manifests))
    write_json(store, run_key(ds, "stats/publish.json"), stats["manifest"])

    # Last: the marker that says everything above is complete.
    write_json(store, success_key(ds), {"ds": ds, "rows": len(manifest), "manifests": manifests})
    locations = {
        "creatives": store.url(creatives_prefix(ds)),
        "manifests": {c: store.url(k) for c, k in manifests.items()},
        "report": store.url(report_key(ds)),
        "success": store.url(success_key(ds)),
    }
    log.info(
        "published %d manifest rows (%d distinct creatives) for %d campaigns; report at %s",
        len(manifest), stats["manifest"]["creatives"], len(manifests), locations["report"],
    )  # fmt: skip
    return {"rows": len(manifest), "campaigns": sorted(manifests), **locations}


def _campaign_of(key: str) -> str:
    """The campaign id of a manifest key (layout.manifest_key)."""
    return key.split("/campaign=", 1)[1].split("/", 1)[0]


def _generated(store: ObjectStore, ds: str) -> pd.DataFrame:
    """Every planned shard's result table; names the shards without one."""
    import pandas as pd

    shards = read_json(store, run_key(ds, "stats/plan.json"))["shards"]
    missing = [i for i in range(shards) if not store.exists(shard_result_key(ds, i))]
    if missing:
        raise RuntimeError(
            f"generate shards {missing} of {shards} have no result for {ds}: clear and rerun the failed "
            "generate tasks"
        )
    frames = [read_frame(store, shard_result_key(ds, i)) for i in range(shards)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=GENERATED_COLUMNS)


def _collect_stats(store: ObjectStore, ds: str) -> dict:
    """What each stage said about itself, for the report."""
    stats = {}
    for name, key in {
        "validation": run_key(ds, "validation.json"),
        "histories": run_key(ds, "stats/histories.json"),
        "keywords": run_key(ds, "stats/keywords.json"),
        "preferences": run_key(ds, "preference_graph.json"),
        "token_embeddings": run_key(ds, "stats/token_embeddings.json"),
        "plan": run_key(ds, "stats/plan.json"),
        "headlines": run_key(ds, "stats/headlines.json"),
    }.items():
        if store.exists(key):
            stats[name] = read_json(store, key)
    return stats
