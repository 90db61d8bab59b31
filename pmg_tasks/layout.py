"""Object-store keys: the stable layout that recommender teams read (see DESIGN.md).

Every key a stage reads or writes is spelled here and nowhere else.
"""

from __future__ import annotations

import hashlib
import re

_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def run_key(ds: str, name: str) -> str:
    """A stage output of one run, e.g. run_key(ds, "events.parquet")."""
    return f"runs/ds={ds}/{name}"


def shard_key(ds: str, index: int) -> str:
    return run_key(ds, f"shards/shard-{index:05d}.parquet")


def shard_result_key(ds: str, index: int) -> str:
    return run_key(ds, f"generated/shard-{index:05d}.parquet")


def creatives_prefix(ds: str) -> str:
    return f"creatives/ds={ds}/"


def campaign_creatives_prefix(ds: str, campaign_id: str) -> str:
    return f"{creatives_prefix(ds)}campaign={campaign_id}/"


def creative_key(ds: str, campaign_id: str, creative_id: str) -> str:
    return f"{campaign_creatives_prefix(ds, campaign_id)}{creative_id}.png"


def manifest_key(ds: str, campaign_id: str) -> str:
    return f"manifests/ds={ds}/campaign={campaign_id}/manifest.parquet"


def success_key(ds: str) -> str:
    return f"manifests/ds={ds}/_SUCCESS"


def report_key(ds: str) -> str:
    return f"reports/ds={ds}/index.html"


def keyword_cache_key(kind: str, content_hash: str, prompt_version: str, model_id: str, scenario: str = "") -> str:
    """One cached extraction; `model_id` must already be a safe path segment (keywords/cache.py makes it one)."""
    scope = f"{scenario}/" if scenario else ""
    return f"cache/keywords/{kind}/{scope}{model_id}/{prompt_version}/{content_hash}.json"


def keyword_shard_key(ds: str, kind: str, index: int) -> str:
    """A keyword task's output: kind is `users` or `items`."""
    return run_key(ds, f"keywords/{kind}-{index:05d}.parquet")


def keyword_shard_stats_key(ds: str, index: int) -> str:
    return run_key(ds, f"keywords/stats-{index:05d}.json")


def keyword_plan_key(ds: str) -> str:
    return run_key(ds, "keywords/plan.json")


def keyword_vocabulary_key(ds: str) -> str:
    """The catalog's title statistics, computed once per keyword stage run (keywords/catalog.py)."""
    return run_key(ds, "keywords/catalog_vocabulary.json")


GNN_MODELS_PREFIX = "models/gnn/"
# Names the model version in force; written last, so a failed night leaves the previous one in place.
GNN_LATEST_KEY = GNN_MODELS_PREFIX + "LATEST"


def gnn_model_prefix(version: str) -> str:
    return f"{GNN_MODELS_PREFIX}{version}/"


ITEM_IMAGES_PREFIX = "catalog/images/"


def item_image_key(item_id: str, extension: str = "png") -> str:
    """Where the catalog image of `item_id` lives in the store (what `items.image_uri` names). An id that
    is not a safe path segment is named by its hash instead, so no id can reach outside the prefix."""
    segment = item_id if _SAFE_SEGMENT.match(item_id) else "_" + hashlib.sha256(item_id.encode()).hexdigest()[:20]
    return f"{ITEM_IMAGES_PREFIX}{segment}.{extension.lstrip('.').lower()}"


TOKEN_MODELS_PREFIX = "models/tokens/"
# Names the token-embedding version in force; written last, like the GNN's.
TOKEN_LATEST_KEY = TOKEN_MODELS_PREFIX + "LATEST"
# Written last inside a version: its presence is what marks the version complete.
TOKEN_INDEX_FILE = "tokens.json"


def token_model_prefix(version: str) -> str:
    return f"{TOKEN_MODELS_PREFIX}{version}/"


def shard_audience_key(ds: str, index: int) -> str:
    """The users who choose among the creatives of shard `index`, each by their own preference keywords."""
    return run_key(ds, f"shards/shard-{index:05d}-audience.parquet")


def shard_record_prefix(ds: str, index: int) -> str:
    """Where a generate task records the requests it finished, a part at a time, so a retry resumes."""
    return run_key(ds, f"generated/shard-{index:05d}.parts/")


def shard_record_part_key(ds: str, index: int, part: int) -> str:
    return f"{shard_record_prefix(ds, index)}part-{part:05d}.parquet"


def review_key(ds: str, campaign_id: str) -> str:
    """A reviewer's decision on a campaign held for review: approved or rejected, by whom, with the comment."""
    return run_key(ds, f"review/{campaign_id}.json")
