"""Run the nightly stages in-process, in order, without a scheduler (what each DAG task calls)."""

from __future__ import annotations

from pmg_tasks.settings import Settings


def run_stages_until(settings: Settings, ds: str, last: str) -> dict:
    """Every stage of the nightly flow up to and including `last`, in DAG order; generate runs every shard."""
    from pmg_tasks.extract import extract_clickstream
    from pmg_tasks.generate.shard import generate_shard
    from pmg_tasks.headlines import write_headlines
    from pmg_tasks.histories import build_histories
    from pmg_tasks.keywords.stage import extract_keywords
    from pmg_tasks.plan import plan_generation
    from pmg_tasks.preferences.stage import update_preference_tokens
    from pmg_tasks.publish import publish_run
    from pmg_tasks.tokens.stage import train_token_embeddings
    from pmg_tasks.validation.stage import validate_events

    stages = {
        "extract": extract_clickstream,
        "validate": validate_events,
        "histories": build_histories,
        "keywords": extract_keywords,
        "preference_tokens": update_preference_tokens,
        "plan": plan_generation,
        "token_embeddings": train_token_embeddings,
        "headlines": write_headlines,
        "generate": lambda s, day: [generate_shard(s, day, i) for i in results["plan"]],
        "publish": publish_run,
    }
    if last not in stages:
        raise ValueError(f"unknown stage {last!r}; choose one of {list(stages)}")
    results: dict = {}
    for name, stage in stages.items():
        results[name] = stage(settings, ds)
        if name == last:
            return results
    return results
