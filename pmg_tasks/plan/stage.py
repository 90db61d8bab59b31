"""Stage 6, plan: active campaigns x audience x target items -> generation requests, cut into shards.

A campaign reaches its audience. With `personalization: segment` (the default) the users of one preference
segment (users sharing their coarse DPPMG tokens) share one generation per target item: its prompt carries
the segment's tokens and the words that describe them, and each user later gets their own best candidates
by their own keywords (generate/choice.py). With `user`, every user gets a generation of their own, with
their own tokens and keywords in the prompt. Either way identical prompts are generated once.

Writes under runs/ds=<ds>/:

    requests.parquet          one row per planned (campaign, user, target item): what the manifest is made of
    generations.parquet       one row per distinct generation (signature): its prompt and what it was made of
    shards/shard-NNNNN.parquet           the generations of one GPU task
    shards/shard-NNNNN-audience.parquet  who chooses among each of them, by which preference keywords
    stats/plan.json           requested creatives, distinct generations and their ratio, dropped keywords
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from itertools import zip_longest
from typing import TYPE_CHECKING, Any

from pmg_tasks import layout
from pmg_tasks.campaigns import Campaign, CampaignError, CampaignProblem, campaigns_for_run
from pmg_tasks.plan.prompt import PromptParts, PromptTooLong, fit_negative_prompt, fit_prompt
from pmg_tasks.store import ObjectStore, open_store, read_frame, write_json, write_table
from pmg_tasks.text_safety import clean_keyword, clean_text

if TYPE_CHECKING:
    import pandas as pd

    from pmg_tasks.settings import Generation, Settings

log = logging.getLogger(__name__)

# Words that describe a segment in its prompt: its tokens' most typical keywords, interleaved.
SEGMENT_WORDS = 6
REQUEST_COLUMNS = [
    "campaign_id", "user_id", "item_id", "segment_id", "personalization", "signature", "preference_keywords",
    "preference_text", "alpha", "variants", "consistency_weight",
]  # fmt: skip
GENERATION_COLUMNS = [
    "signature", "campaign_id", "item_id", "segment_id", "personalization", "owner_user_id", "users", "prompt",
    "negative_prompt", "title", "style", "target_keywords", "preference_tokens", "preference_words",
    "target_text", "target_image_key", "alpha", "consistency_weight", "candidates", "variants", "prompt_tokens",
    "dropped_keywords", "image_size", "inference_steps",
]  # fmt: skip
SHARD_COLUMNS = [
    "signature", "campaign_id", "prompt", "negative_prompt", "target_text", "target_image_key", "alpha",
    "consistency_weight", "candidates", "variants", "image_size", "inference_steps",
]  # fmt: skip


def plan_generation(settings: Settings, ds: str) -> list[int]:
    """Write the plan of `ds` (see the module docstring); return the shard indices to map over.

    A campaign that cannot be planned (broken, or targeting items the catalog lacks) is skipped and named,
    with the field and the fix, in the log and in stats/plan.json; the others are planned."""
    import pandas as pd

    from pmg_tasks.keywords.scenario import load_scenario
    from pmg_tasks.models.diffusion import prompt_tokenizer, require_model_dir

    store = open_store(settings)
    found = campaigns_for_run(settings, ds, store)
    campaigns = found.active(ds)
    skipped = list(found.problems)
    inputs = _PlanInputs.read(store, ds, settings)
    tokenizer = prompt_tokenizer(
        require_model_dir(settings.models.diffusion, "diffusion"), sorted(inputs.tokens_in_use())
    )
    negative_default = load_scenario(settings.keywords.scenario).negative_prompt

    requests, generations, planned = [], [], []
    for campaign in campaigns:
        try:
            planned_requests, planned_generations = plan_campaign(
                campaign, inputs, tokenizer, settings.generation, negative_default, ds
            )
        except CampaignError as error:
            problem = CampaignProblem(found.files.get(campaign.campaign_id, ""), campaign.campaign_id,
                                      "target_items", str(error), "fix the campaign file and rerun the plan task")  # fmt: skip
            log.warning("skipping campaign %s: %s", campaign.campaign_id, problem)
            skipped.append(problem)
            continue
        planned.append(campaign)
        requests.append(planned_requests)
        generations.append(planned_generations)
    requests_frame = pd.concat(requests, ignore_index=True) if requests else pd.DataFrame(columns=REQUEST_COLUMNS)
    generations_frame = (
        pd.concat(generations, ignore_index=True) if generations else pd.DataFrame(columns=GENERATION_COLUMNS)
    ).sort_values(["campaign_id", "signature"], ignore_index=True)
    write_table(store, layout.run_key(ds, "requests.parquet"), requests_frame[REQUEST_COLUMNS])
    write_table(store, layout.run_key(ds, "generations.parquet"), generations_frame[GENERATION_COLUMNS])

    shards = write_shards(store, ds, generations_frame, requests_frame, settings.generation)
    stats = plan_stats(planned, requests_frame, generations_frame, shards, inputs)
    stats["skipped_campaigns"] = [vars(p) for p in skipped]
    write_json(store, layout.run_key(ds, "stats/plan.json"), stats)
    log.info(
        "planned %d creatives for %d users in %d distinct generations (%.1f creatives per generation), "
        "%d shards; %d keywords dropped to fit prompts",
        stats["requested_creatives"], stats["users"], stats["generations"],
        stats["creatives_per_generation"] or 0.0, len(shards), stats["dropped_keywords"],
    )  # fmt: skip
    return shards


class _PlanInputs:
    """What the earlier stages wrote that planning reads, indexed for lookups."""

    def __init__(self, histories, keywords, item_words, items, tokens, descriptors, image_keys, target_reference):
        self.histories = histories
        self.keywords = keywords
        self.item_words = item_words
        self.items = items
        self.tokens = tokens
        self.descriptors = descriptors
        self.image_keys = image_keys
        self.target_reference = target_reference

    @classmethod
    def read(cls, store: ObjectStore, ds: str, settings: Settings) -> _PlanInputs:
        from pmg_tasks.item_images import item_image_keys

        def frame(name: str) -> pd.DataFrame:
            return read_frame(store, layout.run_key(ds, name))

        items = frame("items.parquet").drop_duplicates("item_id", keep="last").set_index("item_id")
        table = frame("preference_tokens.parquet")
        tokens = {
            user: (list(all_tokens), list(coarse), segment)
            for user, all_tokens, coarse, segment in zip(
                table["user_id"], table["tokens"], table["segment_tokens"], table["segment_id"], strict=True
            )
        }
        descriptors = frame("token_descriptors.parquet").set_index("token")["top_keywords"].map(list).to_dict()
        reference = settings.generation.target_reference
        image_keys = {} if reference == "keywords" else item_image_keys(items.reset_index(), store)
        return cls(
            histories=frame("histories.parquet"),
            keywords=frame("keywords.parquet").set_index("user_id")["preference_keywords"].map(list).to_dict(),
            item_words=frame("item_keywords.parquet").set_index("item_id")["keywords"].map(list).to_dict(),
            items=items, tokens=tokens, descriptors=descriptors, image_keys=image_keys,
            target_reference=reference,
        )  # fmt: skip

    def tokens_in_use(self) -> set[str]:
        return {token for tokens, _, _ in self.tokens.values() for token in tokens}


def select_audience(campaign: Campaign, histories: pd.DataFrame, ds: str) -> pd.DataFrame:
    """Users the campaign reaches on `ds`, most engaged first (then by id, so the choice is stable)."""
    import datetime as dt

    audience, rules = histories, campaign.audience
    if rules.categories:
        wanted = set(rules.categories)
        audience = audience[audience["categories"].map(lambda cats: bool(wanted.intersection(cats)))]
    if rules.recency_days:
        since = (dt.date.fromisoformat(ds) - dt.timedelta(days=rules.recency_days - 1)).isoformat()
        audience = audience[audience["last_event_date"] >= since]
    if rules.min_engagement:
        audience = audience[audience["engagement"] >= rules.min_engagement]
    audience = audience.sort_values(["engagement", "user_id"], ascending=[False, True])
    if campaign.audience.max_users:
        audience = audience.head(campaign.audience.max_users)
    return audience


def plan_campaign(
    campaign: Campaign, inputs: _PlanInputs, tokenizer, generation: Generation, negative_default: str, ds: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The campaign's creative requests (one per user and target item) and its distinct generations.
    Raises CampaignError when its targets are not in the catalog."""
    import pandas as pd

    targets = campaign.targets_in(inputs.items)
    missing = [item for item in targets if item not in inputs.items.index]
    if missing:
        raise CampaignError(
            f"campaign {campaign.campaign_id!r} targets items not in the catalog: {missing}; "
            "fix target_items in the campaign file"
        )
    if not targets:
        raise CampaignError(
            f"campaign {campaign.campaign_id!r}: target_filter matches no catalog item; widen the filter"
        )
    pixels = (campaign.image_size or generation.image_size, campaign.inference_steps or generation.inference_steps)
    denied = campaign.denied
    alpha = generation.default_alpha if campaign.alpha is None else campaign.alpha
    candidates = max(campaign.candidates or generation.candidates_per_request, campaign.variants)
    negative = fit_negative_prompt(
        denied.redact(clean_text(campaign.negative_prompt or negative_default, 300)).split(","), tokenizer
    )
    audience = select_audience(campaign, inputs.histories, ds)
    users = _audience_taste(audience["user_id"].tolist(), inputs, denied, campaign.personalization)

    # Generations by signature; `fitted` remembers which signature a prompt's parts came to, since parts
    # that differ only in keywords the budget drops make the same prompt and so the same generation.
    requests, generations, fitted_parts = [], {}, {}
    for item_id in targets:
        title = denied.redact(clean_text(inputs.items.at[item_id, "title"], 120))
        target_words = tuple(denied.keep(inputs.item_words.get(item_id, [])))
        style = denied.redact(clean_text(campaign.style, 200))
        image_key = inputs.image_keys.get(item_id, "")
        for user in users:
            tokens, words = (
                (user["segment_tokens"], user["segment_words"]) if campaign.personalization == "segment"
                else (user["tokens"], user["keywords"])
            )  # fmt: skip
            parts = PromptParts(style, title, target_words, tuple(tokens), tuple(words))
            signature = fitted_parts.get(parts)
            if signature is None:
                try:
                    fitted = fit_prompt(parts, tokenizer)
                except PromptTooLong as error:
                    raise CampaignError(f"campaign {campaign.campaign_id!r}, item {item_id}: {error}") from None
                signature = request_signature(campaign, item_id, fitted.text, negative, candidates, generation, pixels)
                fitted_parts[parts] = signature
                if signature not in generations:
                    generations[signature] = {
                        "signature": signature, "campaign_id": campaign.campaign_id, "item_id": item_id,
                        "segment_id": user["segment_id"], "personalization": campaign.personalization,
                        "owner_user_id": user["user_id"] if campaign.personalization == "user" else "",
                        "users": 0, "prompt": fitted.text, "negative_prompt": negative, "title": title,
                        "style": style, "target_keywords": list(fitted.parts.target_words),
                        "preference_tokens": list(tokens), "preference_words": list(fitted.parts.preference_words),
                        "target_text": ", ".join(fitted.parts.target_words) or title or item_id,
                        "target_image_key": image_key, "alpha": alpha,
                        "consistency_weight": campaign.consistency_weight, "candidates": candidates,
                        "variants": campaign.variants, "prompt_tokens": fitted.tokens,
                        "dropped_keywords": fitted.dropped_keywords, "image_size": pixels[0],
                        "inference_steps": pixels[1],
                    }  # fmt: skip
            generation_row = generations[signature]
            generation_row["users"] += 1
            requests.append({
                "campaign_id": campaign.campaign_id, "user_id": user["user_id"], "item_id": item_id,
                "segment_id": user["segment_id"], "personalization": campaign.personalization,
                "signature": generation_row["signature"], "preference_keywords": user["keywords"],
                "preference_text": user["preference_text"], "alpha": alpha, "variants": campaign.variants,
                "consistency_weight": campaign.consistency_weight,
            })  # fmt: skip
    return (
        pd.DataFrame(requests, columns=REQUEST_COLUMNS),
        pd.DataFrame(list(generations.values()), columns=GENERATION_COLUMNS),
    )


def _audience_taste(
    user_ids: Sequence[str], inputs: _PlanInputs, denied, personalization: str
) -> list[dict[str, Any]]:
    """Per user: their tokens and segment, their own keywords (what their d_p is measured against), and the
    words that describe their segment; every word cleared by the campaign's denylist."""
    described: dict[tuple[str, ...], list[str]] = {}
    users = []
    for user_id in user_ids:
        # A user the preference graph did not see tonight has no tokens: they share the token-less segment.
        tokens, segment_tokens, segment = inputs.tokens.get(user_id, ([], [], ""))
        keywords = denied.keep(inputs.keywords.get(user_id, []))
        key = tuple(segment_tokens)
        if key not in described:
            described[key] = segment_words(segment_tokens, inputs.descriptors, denied)
        users.append({
            "user_id": user_id, "tokens": tokens, "segment_tokens": segment_tokens, "segment_id": segment,
            "keywords": keywords, "segment_words": described[key],
            # A user with no keyword left is measured against the words of their segment.
            "preference_text": ", ".join(keywords or described[key]) or "popular",
        })  # fmt: skip
    return users


def segment_words(tokens: Sequence[str], descriptors: Mapping[str, list[str]], denied) -> list[str]:
    """The words that describe a segment: its tokens' most typical keywords, the first of each token first,
    without the denied ones, at most SEGMENT_WORDS."""
    lists = [denied.keep(clean_keyword(w) for w in descriptors.get(token, [])) for token in tokens]
    merged = [word for row in zip_longest(*lists) for word in row if word]
    return list(dict.fromkeys(merged))[:SEGMENT_WORDS]


def request_signature(
    campaign: Campaign, item_id: str, prompt: str, negative_prompt: str, candidates: int, generation: Generation,
    pixels: tuple[int, int] | None = None,
) -> str:
    """Everything that changes the pixels of a generation's candidates, hashed (model versions join later,
    in the creative id). How users choose among them (alpha, variants) is not in it: the same pixels keep
    their names when only the choice changes."""
    size, steps = pixels or (generation.image_size, generation.inference_steps)
    recipe = json.dumps([campaign.campaign_id, item_id, prompt, negative_prompt, candidates,
                         [steps, generation.guidance_scale, size]])  # fmt: skip
    return hashlib.sha256(recipe.encode()).hexdigest()[:24]


def shard_sizes(generations: int, generation: Generation) -> tuple[int, int]:
    """(generations per shard, shards) for a night of `generations`: about `requests_per_shard` each,
    never more than `max_shards` shards (so the map stays far below Airflow's max_map_length)."""
    per_shard = max(generation.requests_per_shard, math.ceil(generations / generation.max_shards))
    return per_shard, math.ceil(generations / per_shard)


def write_shards(
    store: ObjectStore, ds: str, generations: pd.DataFrame, requests: pd.DataFrame, generation: Generation
) -> list[int]:
    """Cut the generations into shards of about `requests_per_shard` (never more than `max_shards`), each
    with its audience file; return the shard indices."""
    # A rerun may plan fewer shards: stale shard files and results must not linger. Records of shards that
    # remain stay: a generate task trusts only the rows whose request key still matches.
    store.delete_prefix(layout.run_key(ds, "shards/"))
    per_shard, count = shard_sizes(len(generations), generation)
    for key in store.list_keys(layout.run_key(ds, "generated/")):
        index = _shard_index(key)
        if index is None or index >= count:
            store.delete_prefix(key)
    audiences = requests[["signature", "user_id", "preference_text"]].drop_duplicates(["signature", "user_id"])
    shards = []
    for index in range(count):
        rows = generations.iloc[index * per_shard : (index + 1) * per_shard]
        write_table(store, layout.shard_key(ds, index), rows[SHARD_COLUMNS].reset_index(drop=True))
        members = audiences[audiences["signature"].isin(rows["signature"])].sort_values(["signature", "user_id"])
        write_table(store, layout.shard_audience_key(ds, index), members.reset_index(drop=True))
        shards.append(index)
    return shards


def plan_stats(
    campaigns: Sequence[Campaign], requests: pd.DataFrame, generations: pd.DataFrame, shards: list[int],
    inputs: _PlanInputs,
) -> dict[str, Any]:
    """What the night will cost: requested creatives against distinct generations, overall and per campaign."""
    def costs(req: pd.DataFrame, gen: pd.DataFrame) -> dict[str, Any]:
        requested = int(req["variants"].sum()) if len(req) else 0
        return {
            "users": int(req["user_id"].nunique()),
            "creative_requests": len(req),
            "requested_creatives": requested,
            "generations": len(gen),
            "segments": int(gen["segment_id"].nunique()) if len(gen) else 0,
            "candidate_images": int(gen["candidates"].sum()) if len(gen) else 0,
            "creatives_per_generation": round(requested / len(gen), 3) if len(gen) else None,
            "dropped_keywords": int(gen["dropped_keywords"].sum()) if len(gen) else 0,
        }

    by_campaign = {
        c.campaign_id: {
            "personalization": c.personalization, "review": c.review, "priority": c.priority,
            **costs(requests[requests["campaign_id"] == c.campaign_id],
                    generations[generations["campaign_id"] == c.campaign_id]),
        }  # fmt: skip
        for c in campaigns
    }
    users_without_tokens = int((~requests["user_id"].isin(list(inputs.tokens))).sum()) if len(requests) else 0
    return {
        "campaigns": [c.campaign_id for c in campaigns],
        **costs(requests, generations),
        "shards": len(shards),
        "requests_without_tokens": users_without_tokens,
        "by_campaign": by_campaign,
    }


def _shard_index(key: str) -> int | None:
    import re

    match = re.search(r"/shard-(\d{5})", key)
    return int(match.group(1)) if match else None
