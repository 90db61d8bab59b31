"""Stage counts of a night as Airflow metrics (through Airflow's own StatsD or OpenTelemetry settings,
`[metrics]`) and as files under `runs/ds=<ds>/stats/metrics/`.

Each finished task says what it counted: events extracted and quarantined by rule, keyword cache hits and
catalog fallbacks, segments, requested and distinct generations, creatives published and blocked by the
safety checks, and the retries it took. Names are `pmg.<stage>.<count>` below Airflow's `statsd_prefix`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pmg_tasks.layout import run_key

if TYPE_CHECKING:
    from pmg_tasks.store import ObjectStore

log = logging.getLogger(__name__)

METRIC_PREFIX = "pmg"


def metrics_key(ds: str, task_id: str, map_index: int = -1) -> str:
    suffix = f"-{map_index:05d}" if map_index >= 0 else ""
    return run_key(ds, f"stats/metrics/{task_id}{suffix}.json")


def stage_counts(store: ObjectStore, ds: str, task_id: str, result: Any) -> dict[str, int]:
    """The counts task `task_id` reports, from what it returned and the stats files it wrote."""
    from pmg_tasks.store import read_json

    def stats(name: str) -> dict:
        key = run_key(ds, name)
        return read_json(store, key) if store.exists(key) else {}

    result = result if isinstance(result, dict) else {}
    if task_id == "extract":
        return {"events.extracted": result.get("events", 0), "items.extracted": result.get("items_extracted", 0),
                "items.quarantined": result.get("items_quarantined", 0)}  # fmt: skip
    if task_id == "validate":
        validation = stats("validation.json")
        counts = {"events.valid": validation.get("valid", 0), "events.quarantined": validation.get("quarantined", 0)}
        counts.update({f"events.quarantined.{rule}": n for rule, n in validation.get("by_rule", {}).items()})
        return counts
    if task_id == "keywords":
        shard = stats(f"keywords/stats-{result.get('shard', 0):05d}.json")
        return {f"keywords.{name}": shard.get(name, 0) for name in (
            "users", "user_cache_hits", "user_cache_misses", "item_cache_hits", "model_calls", "failed_calls",
            "fallbacks",
        )}  # fmt: skip
    if task_id == "preference_tokens":
        return {"preferences.users": result.get("users", 0), "preferences.segments": result.get("segments", 0)}
    if task_id == "plan":
        plan = stats("stats/plan.json")
        return {"plan.requested_creatives": plan.get("requested_creatives", 0),
                "plan.distinct_generations": plan.get("generations", 0), "plan.shards": plan.get("shards", 0)}  # fmt: skip
    if task_id == "generate":
        return {"generate.requests": result.get("requests", 0), "generate.drawn": result.get("generated", 0),
                "generate.resumed": result.get("skipped", 0), "generate.creatives": result.get("creatives", 0),
                "generate.blocked_by_safety": _blocked(result.get("safety", {}))}  # fmt: skip
    if task_id == "publish":
        published = stats("stats/publish.json")
        return {"publish.manifest_rows": published.get("rows", 0), "publish.creatives": published.get("creatives", 0),
                "publish.blocked_by_safety": _blocked(published.get("safety", {}))}  # fmt: skip
    return {}


def _blocked(safety: dict) -> int:
    return int(safety.get("blocked", 0)) if isinstance(safety, dict) else 0


def record_stage_metrics(store: ObjectStore, ds: str, task_id: str, map_index: int, try_number: int,
                         result: Any) -> dict[str, int]:  # fmt: skip
    """Emit the task's counts as Airflow metrics and write them to the run's stats folder."""
    from pmg_tasks.store import write_json

    counts = {name: int(value) for name, value in stage_counts(store, ds, task_id, result).items()}
    # A retry that succeeded is still a retry: the night nobody watched should say how bumpy it was.
    counts["task.retries"] = max(try_number - 1, 0)
    emit(task_id, counts)
    write_json(store, metrics_key(ds, task_id, map_index), {"task_id": task_id, "map_index": map_index, **counts})
    return counts


_INITIALIZED = False


def emit(task_id: str, counts: dict[str, int]) -> None:
    """Counters through Airflow's configured metrics backend (a no-op when `[metrics]` turns none on)."""
    from airflow.sdk.observability import stats

    global _INITIALIZED
    if not _INITIALIZED:
        # `airflow dags test` and dag.test() run tasks in-process, where the task runner's own start-up
        # (which sets up the backend from [metrics]) did not happen; a worker's task runner did it already,
        # and doing it again only opens a fresh socket.
        from airflow.sdk.configuration import conf
        from airflow.sdk.observability.metrics.stats_utils import get_stats_factory

        stats.initialize(factory=get_stats_factory(), export_legacy_names=conf.getboolean("metrics", "legacy_names_on"))
        _INITIALIZED = True
    for name, value in counts.items():
        # Zeros too: a counter that exists at 0 tells a dashboard the stage ran and found nothing.
        stats.incr(f"{METRIC_PREFIX}.{name}", count=value)
    # One per finished task, so a dashboard sees a night's progress stage by stage.
    stats.incr(f"{METRIC_PREFIX}.task.{task_id}.succeeded")
