"""Stage 8, publish: manifests per campaign, the run report, and the success marker, written last.

Recommender teams read `manifests/ds=.../campaign=.../manifest.parquet` once `_SUCCESS` exists; a run that
fails half-way never leaves a `_SUCCESS` next to manifests it did not finish. The columns, their types and
the `_SUCCESS` contract are in docs/manifest.md (and pmg_tasks/manifest.py). A manifest has one row per
(user, target item, rank): many users of a segment may share one creative, which is stored once.

The run date is the `ds=` partition of the path, not a column of the file: every hive-aware reader (pandas,
pyarrow, DuckDB, Spark) adds it when reading the root, and Spark refuses a column that is both.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from pmg_tasks import manifest as manifest_schema
from pmg_tasks.generate.safety import safety_counts
from pmg_tasks.layout import (
    creatives_prefix,
    manifest_key,
    report_key,
    run_key,
    shard_key,
    shard_record_prefix,
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

MANIFEST_COLUMNS = manifest_schema.COLUMN_NAMES
GENERATED_COLUMNS = [
    "signature", "user_id", "rank", "creative_id", "image_key", "seed", "d_p", "d_t", "consistency", "z",
    "diffusion_model", "clip_model", "token_embeddings", "safety",
]  # fmt: skip


class PublishError(RuntimeError):
    """The night cannot be published as asked; the message names what is missing and the fix."""


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
        raise PublishError(
            f"{len(short)} planned (generation, user) pairs have fewer creatives than planned (e.g. user "
            f"{user_id} of {signature}): a generate task did not finish; clear and rerun the failed generate tasks"
        )
    texts = generations[["signature", "prompt", "prompt_tokens", "negative_prompt", "preference_tokens",
                         "target_keywords"]]  # fmt: skip
    if "llm_model" not in headlines.columns:  # headlines written before the column existed
        headlines = headlines.assign(llm_model="template")
    manifest = (
        requests.drop(columns=["preference_text", "variants"])
        .merge(generated[GENERATED_COLUMNS], on=["signature", "user_id"], how="inner", validate="one_to_many")
        .merge(texts, on="signature", how="left", validate="many_to_one")
        .merge(headlines[["signature", "headline", "llm_model"]], on="signature", how="left", validate="many_to_one")
    )
    manifest["image_uri"] = manifest["image_key"].map(store.url)
    manifest = manifest.sort_values(manifest_schema.ORDER, ignore_index=True, kind="stable")
    return manifest[MANIFEST_COLUMNS]


def publish_run(
    settings: Settings, ds: str, campaigns: Collection[str] | None = None, held: Collection[str] = (), *,
    partial: bool = False, failed_shards: Sequence[int] = (),
) -> dict:
    """Write the manifests, the report and `_SUCCESS`; return where they are and what they hold.

    `campaigns` publishes only those (an approved campaign, or a run of one campaign); `held` publishes all
    but those (campaigns waiting for review). Either way the other campaigns' manifests of the date stay as
    they are, and the report shows every planned campaign with its state.

    A shard without a result (or named in `failed_shards`: its generate task failed in this run) stops the
    publish, naming the shards, unless `partial`: then what exists is published, and each manifest and
    `_SUCCESS` name the requests that are missing."""
    store = open_store(settings)
    # First take the marker away: readers must not trust this date while it is being rewritten.
    store.delete_prefix(success_key(ds))

    requests = read_frame(store, run_key(ds, "requests.parquet"))
    generations = read_frame(store, run_key(ds, "generations.parquet"))
    headlines = read_frame(store, run_key(ds, "headlines.parquet"))
    generated, missing_shards = _generated(store, ds, set(failed_shards), partial)
    absent = _requests_of_shards(store, ds, missing_shards)
    missing = requests[requests["signature"].isin(absent)]
    planned = assemble_manifest(requests[~requests["signature"].isin(absent)], generations, headlines, generated, store)
    in_scope = _in_scope(campaigns, held)
    manifest = planned.loc[planned["campaign_id"].map(in_scope).astype(bool)].reset_index(drop=True)
    missing = missing.loc[missing["campaign_id"].map(in_scope).astype(bool)]

    tonight = [c for c in sorted(set(requests["campaign_id"])) if in_scope(c)]
    manifests, tables = _write_manifests(store, ds, manifest, missing, tonight, in_scope)
    # Only now, with the new manifests in place: images no manifest names any more (another model version,
    # a dropped campaign) go, before the marker says the date is complete. Those a missing shard recorded
    # stay (its retried task trusts its record and would not draw them again), and so do those of held
    # campaigns and of manifests this call leaves alone.
    kept = [key for campaign, key in manifests.items() if campaign not in tonight]
    keep = (
        set(planned["image_key"]) | _recorded_images(store, ds, missing_shards)
        | {k for key in kept for k in read_table(store, key).column("image_key").to_pylist() if k}
    )
    removed = _remove_unreferenced_creatives(store, ds, keep)
    counts = {
        "rows": len(manifest),
        # Every campaign published for the date so far: this call's, and those an earlier call published.
        "published_rows": len(manifest) + sum(read_table(store, key).num_rows for key in kept),
        "campaigns": sorted(manifests),
        "creatives": int(manifest["creative_id"].nunique()),
        "users": int(manifest["user_id"].nunique()),
        "missing_requests": len(missing),
        "missing_shards": missing_shards,
        "removed_creatives": removed,
    }
    if settings.publishing.warehouse_table:
        # The table holds the date's published rows: this call's and those of manifests it left alone.
        counts["warehouse_rows"] = _upsert_warehouse(settings, ds, tables + [read_table(store, key) for key in kept])
    stats = _collect_stats(store, ds)
    stats["manifest"] = {**counts, "safety": safety_counts(generated)}
    write_report(settings, store, ds, planned, stats, published=sorted(manifests))
    write_json(store, run_key(ds, "stats/publish.json"), stats["manifest"])

    # Last: the marker that says everything above is complete (or, partial, exactly what it lacks).
    write_json(store, success_key(ds), {
        "ds": ds, "rows": len(manifest), "manifests": manifests, "complete": not missing_shards,
        "missing_shards": missing_shards, "missing_requests": _request_list(missing),
    })  # fmt: skip
    locations = {
        "creatives": store.url(creatives_prefix(ds)),
        "manifests": {c: store.url(k) for c, k in manifests.items()},
        "report": store.url(report_key(ds)),
        "success": store.url(success_key(ds)),
    }
    log.info(
        "published %d manifest rows (%d distinct creatives) for %d campaigns%s; removed %d stale creatives; "
        "report at %s", len(manifest), counts["creatives"], len(manifests),
        f", {len(missing)} requests missing from shards {missing_shards}" if missing_shards else "", removed,
        locations["report"],
    )  # fmt: skip
    transfers = store.transfer_stats()
    if transfers:
        log.info("object store: %d requests, %d retried attempts %s", transfers["requests"], transfers["retries"],
                 transfers["retries_by_operation"])  # fmt: skip
    # "creatives" is where they are (as before); their count goes by its own name.
    rest = {k: v for k, v in counts.items() if k != "creatives"}
    return {"ds": ds, "complete": not missing_shards, **rest, "distinct_creatives": counts["creatives"], **locations}


def asset_event_extra(published: dict) -> dict:
    """What the `pmg_creative_manifests` event tells consumers: the date, where its manifests are, counts."""
    return {
        "ds": published["ds"], "complete": published["complete"], "manifests": published["manifests"],
        "success": published["success"], "creatives": published["creatives"], "rows": published["rows"],
        "distinct_creatives": published["distinct_creatives"],
        "users": published["users"], "campaigns": published["campaigns"],
        "missing_requests": published["missing_requests"], "missing_shards": published["missing_shards"],
    }  # fmt: skip


def _upsert_warehouse(settings: Settings, ds: str, tables: list) -> int:
    """The date's rows of generated_creatives become the new manifests' rows."""
    import pyarrow as pa

    from pmg_tasks.creatives_table import upsert_creatives
    from pmg_tasks.warehouse import connect

    with connect(settings) as warehouse:
        return upsert_creatives(warehouse, ds, pa.concat_tables(tables) if tables else manifest_schema.schema().empty_table())


def _in_scope(campaigns: Collection[str] | None, held: Collection[str]):
    """Whether a campaign is this call's to publish: one of `campaigns` if given, and not `held`."""
    chosen, waiting = (None if campaigns is None else set(campaigns)), set(held)
    return lambda campaign: (chosen is None or campaign in chosen) and campaign not in waiting


def _write_manifests(
    store: ObjectStore, ds: str, manifest: pd.DataFrame, missing: pd.DataFrame, campaigns: list[str], in_scope,
) -> tuple[dict[str, str], list]:
    """One manifest per campaign of `campaigns` (empty where all its requests are missing); a campaign in
    scope but dropped since the last attempt at this date loses its old one, and manifests out of scope stay.
    Returns campaign -> key (kept ones included), and the tables written."""
    manifests, tables = {}, []
    for campaign_id in campaigns:
        rows = manifest[manifest["campaign_id"] == campaign_id]
        lacking = _request_list(missing[missing["campaign_id"] == campaign_id])
        table = manifest_schema.to_table(rows, [{k: r[k] for k in ("user_id", "item_id")} for r in lacking])
        manifests[campaign_id] = write_table(store, manifest_key(ds, campaign_id), table)
        tables.append(table)
    for key in store.list_keys(f"manifests/ds={ds}/"):
        if key.endswith("manifest.parquet") and key not in manifests.values():
            if in_scope(_campaign_of(key)):
                store.delete_prefix(key)
            else:
                manifests[_campaign_of(key)] = key
    return dict(sorted(manifests.items())), tables


def _campaign_of(key: str) -> str:
    """The campaign id of a manifest key (layout.manifest_key)."""
    return key.split("/campaign=", 1)[1].split("/", 1)[0]


def _remove_unreferenced_creatives(store: ObjectStore, ds: str, referenced: set[str]) -> int:
    stale = [key for key in store.list_keys(creatives_prefix(ds)) if key not in referenced]
    return store.delete_keys(stale)


def _recorded_images(store: ObjectStore, ds: str, shards: list[int]) -> set[str]:
    """Image keys the result or record parts of `shards` name."""
    keys = set()
    for index in shards:
        sources = [shard_result_key(ds, index), *store.list_keys(shard_record_prefix(ds, index))]
        for key in sources:
            if store.exists(key):
                keys.update(k for k in read_frame(store, key)["image_key"] if k)
    return keys


def _request_list(requests: pd.DataFrame) -> list[dict]:
    """Requests as (campaign_id, user_id, item_id) records, in a fixed order."""
    columns = ["campaign_id", "user_id", "item_id"]
    return requests[columns].sort_values(columns).astype(str).to_dict("records")


def _generated(store: ObjectStore, ds: str, failed: set[int], partial: bool) -> tuple[pd.DataFrame, list[int]]:
    """Every planned shard's result table, and the shards without one (or whose task failed). Without
    `partial`, a missing shard stops the publish, named."""
    import pandas as pd

    shards = read_json(store, run_key(ds, "stats/plan.json"))["shards"]
    missing = [i for i in range(shards) if i in failed or not store.exists(shard_result_key(ds, i))]
    if missing and not partial:
        raise PublishError(
            f"generate shards {missing} of {shards} have no result for {ds}: clear and rerun the failed "
            "generate tasks, or publish what exists with the DAG param publish_partial"
        )
    if missing and len(missing) == shards:
        raise PublishError(f"no generate shard of {ds} finished ({shards} planned): nothing to publish")
    frames = [read_frame(store, shard_result_key(ds, i)) for i in range(shards) if i not in missing]
    generated = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=GENERATED_COLUMNS)
    return generated, missing


def _requests_of_shards(store: ObjectStore, ds: str, shards: list[int]) -> set[str]:
    """The generation signatures the plan put in `shards`."""
    return {s for i in shards for s in read_frame(store, shard_key(ds, i))["signature"]}


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
