"""Object-store keys: the stable layout that recommender teams read (see DESIGN.md).

Every key a stage reads or writes is spelled here and nowhere else.
"""

from __future__ import annotations


def run_key(ds: str, name: str) -> str:
    """A stage output of one run, e.g. run_key(ds, "events.parquet")."""
    return f"runs/ds={ds}/{name}"


def shard_key(ds: str, index: int) -> str:
    return run_key(ds, f"shards/shard-{index:05d}.parquet")


def shard_result_key(ds: str, index: int) -> str:
    return run_key(ds, f"generated/shard-{index:05d}.parquet")


def creatives_prefix(ds: str) -> str:
    return f"creatives/ds={ds}/"


def creative_key(ds: str, campaign_id: str, creative_id: str) -> str:
    return f"{creatives_prefix(ds)}campaign={campaign_id}/{creative_id}.png"


def manifest_key(ds: str, campaign_id: str) -> str:
    return f"manifests/ds={ds}/campaign={campaign_id}/manifest.parquet"


def success_key(ds: str) -> str:
    return f"manifests/ds={ds}/_SUCCESS"


def report_key(ds: str) -> str:
    return f"reports/ds={ds}/index.html"


def keyword_cache_key(kind: str, content_hash: str, prompt_version: str, model_id: str) -> str:
    return f"cache/keywords/{kind}/{model_id}/{prompt_version}/{content_hash}.json"


GNN_MODELS_PREFIX = "models/gnn/"
# Names the model version in force; written last, so a failed night leaves the previous one in place.
GNN_LATEST_KEY = GNN_MODELS_PREFIX + "LATEST"


def gnn_model_prefix(version: str) -> str:
    return f"{GNN_MODELS_PREFIX}{version}/"
