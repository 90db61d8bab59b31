"""Stage 6, plan: active campaigns x audience x target items -> generation requests, cut into shards.

A request is one (campaign, user, target item). Requests whose prompts would be identical share a
signature and are generated once; the manifest later maps every request to its creatives by signature.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from typing import TYPE_CHECKING

from pmg_tasks.campaigns import Campaign, active_campaigns
from pmg_tasks.layout import run_key, shard_key
from pmg_tasks.store import open_store, read_frame, write_json, write_table
from pmg_tasks.text_safety import Denylist, clean_text

if TYPE_CHECKING:
    import pandas as pd

    from pmg_tasks.settings import Generation, Settings

log = logging.getLogger(__name__)


def build_prompt(style: str, title: str, target_words: list[str], preference_words: list[str]) -> str:
    """The diffusion prompt: the target item first, coloured by the user's taste (PMG's composition)."""
    parts = [p for p in (clean_text(style, 120), clean_text(title, 120)) if p]
    parts += target_words
    prompt = ", ".join(parts)
    if preference_words:
        prompt += ", in the taste of: " + ", ".join(preference_words)
    return prompt


def request_signature(
    campaign: Campaign, item_id: str, prompt: str, alpha: float, candidates: int, generation: Generation
) -> str:
    """Everything that changes the pixels or the choice among them, hashed (model versions join later,
    in the creative id)."""
    pixels = [generation.inference_steps, generation.guidance_scale, generation.image_size]
    recipe = json.dumps(
        [campaign.campaign_id, item_id, prompt, alpha, candidates, campaign.variants, pixels], sort_keys=True
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:24]


def select_audience(campaign: Campaign, histories: pd.DataFrame) -> pd.DataFrame:
    """Users the campaign reaches, most engaged first (then by id, so the choice is stable)."""
    audience = histories
    if campaign.audience.categories:
        wanted = set(campaign.audience.categories)
        audience = audience[audience["categories"].map(lambda cats: bool(wanted.intersection(cats)))]
    audience = audience.sort_values(["engagement", "user_id"], ascending=[False, True])
    if campaign.audience.max_users:
        audience = audience.head(campaign.audience.max_users)
    return audience


def plan_generation(settings: Settings, ds: str) -> list[int]:
    """Write `requests.parquet` and one shard file per GPU task; return the shard indices to map over."""
    import pandas as pd

    store = open_store(settings)
    campaigns = active_campaigns(settings.campaigns_file, ds)
    histories = read_frame(store, run_key(ds, "histories.parquet"))
    keywords = read_frame(store, run_key(ds, "keywords.parquet")).set_index("user_id")
    item_words = read_frame(store, run_key(ds, "item_keywords.parquet")).set_index("item_id")["keywords"]
    items = read_frame(store, run_key(ds, "items.parquet")).set_index("item_id")
    segments = _segments(store, ds)
    generation = settings.generation

    requests = []
    for campaign in campaigns:
        missing = [i for i in campaign.target_items if i not in items.index]
        if missing:
            raise ValueError(
                f"campaign {campaign.campaign_id!r} targets items not in the catalog: {missing}; "
                "fix target_items in the campaigns file"
            )
        alpha = generation.default_alpha if campaign.alpha is None else campaign.alpha
        candidates = max(campaign.candidates or generation.candidates_per_request, campaign.variants)
        for user in select_audience(campaign, histories).itertuples(index=False):
            preference = Denylist(campaign.denylist).keep(keywords.at[user.user_id, "preference_keywords"])
            for item_id in campaign.target_items:
                target = Denylist(campaign.denylist).keep(item_words.get(item_id, []))
                prompt = build_prompt(campaign.style, items.at[item_id, "title"], target, preference)
                requests.append(
                    {
                        "campaign_id": campaign.campaign_id,
                        "user_id": user.user_id,
                        "item_id": item_id,
                        "segment_id": segments.get(user.user_id, ""),
                        "signature": request_signature(campaign, item_id, prompt, alpha, candidates, generation),
                        "prompt": prompt,
                        "preference_keywords": preference,
                        "target_keywords": target,
                        "preference_text": ", ".join(preference) or "anything",
                        "target_text": ", ".join(target) or clean_text(items.at[item_id, "title"], 120),
                        "alpha": alpha,
                        "candidates": candidates,
                        "variants": campaign.variants,
                    }
                )
    columns = ["campaign_id", "user_id", "item_id", "segment_id", "signature", "prompt", "preference_keywords",
               "target_keywords", "preference_text", "target_text", "alpha", "candidates", "variants"]
    requests = pd.DataFrame(requests, columns=columns)
    write_table(store, run_key(ds, "requests.parquet"), requests)

    unique = (
        requests.drop_duplicates("signature")
        .sort_values(["campaign_id", "signature"])[
            ["signature", "campaign_id", "prompt", "preference_text", "target_text", "alpha", "candidates",
             "variants"]
        ]
        .reset_index(drop=True)
    )
    # A rerun may plan fewer shards than the last attempt: stale shard files must not linger.
    store.delete_prefix(run_key(ds, "shards/"))
    store.delete_prefix(run_key(ds, "generated/"))
    per_shard = max(generation.requests_per_shard, math.ceil(len(unique) / generation.max_shards))
    shards = []
    for index, start in enumerate(range(0, len(unique), per_shard)):
        write_table(store, shard_key(ds, index), unique.iloc[start : start + per_shard])
        shards.append(index)

    stats = {"campaigns": [c.campaign_id for c in campaigns], "requests": len(requests),
             "unique_requests": len(unique), "shards": len(shards), "requests_per_shard": per_shard}
    write_json(store, run_key(ds, "stats/plan.json"), stats)
    log.info("planned %d requests (%d unique) in %d shards", len(requests), len(unique), len(shards))
    return shards


def _segments(store, ds: str) -> dict[str, str]:
    tokens = read_frame(store, run_key(ds, "preference_tokens.parquet"))
    return dict(zip(tokens["user_id"], tokens["segment_id"], strict=True))
