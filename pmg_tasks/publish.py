"""Stage 8, publish: manifests per campaign, the run report, and the success marker, written last.

Recommender teams read `manifests/ds=.../campaign=.../manifest.parquet` once `_SUCCESS` exists; a run that
fails half-way never leaves a `_SUCCESS` next to manifests it did not finish.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pmg_tasks.layout import creatives_prefix, manifest_key, report_key, run_key, success_key
from pmg_tasks.report import render_report
from pmg_tasks.store import ObjectStore, open_store, read_frame, read_json, write_json, write_table

if TYPE_CHECKING:
    import pandas as pd

    from pmg_tasks.settings import Settings

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "ds", "campaign_id", "user_id", "item_id", "segment_id", "creative_id", "image_key", "image_uri", "rank",
    "seed", "d_p", "d_t", "z", "alpha", "prompt", "preference_keywords", "target_keywords", "signature",
]


def assemble_manifest(requests: pd.DataFrame, generated: pd.DataFrame, ds: str, store: ObjectStore) -> pd.DataFrame:
    """One row per planned creative: every request joined to the creatives made for its signature."""
    missing = requests.loc[~requests["signature"].isin(generated["signature"]), "signature"].unique()
    if len(missing):
        raise RuntimeError(
            f"{len(missing)} planned signatures have no generated creatives (e.g. {missing[0]}): "
            "a generate task did not finish; clear and rerun the failed generate_shard tasks"
        )
    manifest = requests.merge(
        generated[["signature", "creative_id", "image_key", "rank", "seed", "d_p", "d_t", "z"]],
        on="signature", how="inner", validate="many_to_many",
    )
    manifest["ds"] = ds
    manifest["image_uri"] = manifest["image_key"].map(store.url)
    manifest = manifest.sort_values(["campaign_id", "user_id", "item_id", "rank"], ignore_index=True)
    return manifest[MANIFEST_COLUMNS]


def publish_run(settings: Settings, ds: str) -> dict:
    """Write the manifests, the report and `_SUCCESS`; return where they are."""
    import pandas as pd

    store = open_store(settings)
    # First take the marker away: readers must not trust this date while it is being rewritten.
    store.delete_prefix(success_key(ds))

    requests = read_frame(store, run_key(ds, "requests.parquet"))
    results = [read_frame(store, key) for key in store.list_keys(run_key(ds, "generated/"))]
    generated = pd.concat(results, ignore_index=True) if results else pd.DataFrame(
        columns=["signature", "creative_id", "image_key", "rank", "seed", "d_p", "d_t", "z"]
    )
    manifest = assemble_manifest(requests, generated, ds, store)

    manifests = {}
    for campaign_id, rows in manifest.groupby("campaign_id", sort=True):
        manifests[campaign_id] = write_table(store, manifest_key(ds, campaign_id), rows.reset_index(drop=True))
    for key in store.list_keys(f"manifests/ds={ds}/"):
        # A campaign dropped since the last attempt at this date must not keep an old manifest.
        if key.endswith("manifest.parquet") and key not in manifests.values():
            store.delete_prefix(key)

    stats = _collect_stats(store, ds)
    stats["manifest"] = {"rows": len(manifest), "campaigns": sorted(manifests), "creatives": int(
        manifest["creative_id"].nunique())}
    store.put_bytes(report_key(ds), render_report(ds, manifest, stats).encode())
    write_json(store, run_key(ds, "stats/publish.json"), stats["manifest"])

    # Last: the marker that says everything above is complete.
    write_json(store, success_key(ds), {"ds": ds, "rows": len(manifest), "manifests": manifests})
    locations = {
        "creatives": store.url(creatives_prefix(ds)),
        "manifests": {c: store.url(k) for c, k in manifests.items()},
        "report": store.url(report_key(ds)),
        "success": store.url(success_key(ds)),
    }
    log.info("published %d manifest rows for %d campaigns; report at %s", len(manifest), len(manifests),
             locations["report"])
    return {"rows": len(manifest), "campaigns": sorted(manifests), **locations}


def _collect_stats(store: ObjectStore, ds: str) -> dict:
    """What each stage said about itself, for the report."""
    stats = {}
    for name, key in {
        "validation": run_key(ds, "validation.json"),
        "histories": run_key(ds, "stats/histories.json"),
        "keywords": run_key(ds, "stats/keywords.json"),
        "preferences": run_key(ds, "preference_graph.json"),
        "plan": run_key(ds, "stats/plan.json"),
    }.items():
        if store.exists(key):
            stats[name] = read_json(store, key)
    return stats
