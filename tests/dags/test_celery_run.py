"""pmg_nightly under the CeleryExecutor for real: Airflow's metadata in PostgreSQL, Redis as the broker, the
scheduler, dag-processor, api-server, triggerer and two Celery workers (the default queue and `gpu`) on
loopback.

Same night, same settings, first under the LocalExecutor (the same cluster without Celery: the scheduler's
own task processes), then under the CeleryExecutor. The GPU work (diffusion, token training, and the keyword
and headline tasks, whose backend loads an LLM into the task: transformers with the test-size causal LM) ran
on the GPU worker and nothing else did, the GPU pool held concurrency to its slot, every output is the same,
byte for byte, and the publish task's Asset event started the example consumer DAG, which read the night's
manifest."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pmg_tasks.local_cluster import LocalCeleryCluster, database_exists, missing_servers
from pmg_tasks.watch.run_settings import SETTINGS_FILE, output_fields

pytestmark = [
    pytest.mark.night, pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(1500),
    pytest.mark.skipif(bool(missing_servers()), reason=f"CeleryExecutor run: {missing_servers()}"),
]

DS = "2026-11-20"
# Diffusion runs on the GPU worker, and so do the LLM tasks when their backend loads the model itself.
GPU_TASKS = {"token_embeddings", "generate", "keywords", "headlines"}
CONSUMER = "pmg_creatives_consumer"
# What differs between any two runs: durations, and the plausibility ceiling validation takes from the clock
# (now + 1 day); the report prints durations. Everything else must not differ.
TIMING_KEYS = {"seconds", "train_seconds", "ceiling"}
REPORT_PREFIX = "reports/"


@pytest.fixture
def tiny_night(settings, test_size_models):
    """A demo-sized night that still fans out: 3 keyword shards on the test-size LLM, several generate
    shards, slots of 1."""
    from pmg_tasks.cli import seed_demo

    tuned = settings.model_copy(update={
        "models": test_size_models,
        "keyword_backend": "transformers",
        "pools": settings.pools.model_copy(update={"gpu_queue": "gpu", "gpu_slots": 1, "llm_slots": 1}),
        "retries": settings.retries.model_copy(update={"per_task": 0}),
        "generation": settings.generation.model_copy(update={"requests_per_shard": 6}),
        "keywords": settings.keywords.model_copy(update={"users_per_shard": 12}),
        "token_embeddings": settings.token_embeddings.model_copy(update={"steps_per_token": 1}),
    })  # fmt: skip
    seed_demo(tuned, DS, users=36, items=24, days=4, overwrite_campaigns=True)
    return tuned


def outputs(store_root: str) -> dict[str, str]:
    """Every object a night wrote (not the seeded catalog), by content hash; JSON without its timings."""
    root = Path(store_root)
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = path.relative_to(root).as_posix()
        # settings.json records how the night was placed (queues, executor), which is what differs here.
        if key.startswith("catalog/") or key.startswith(REPORT_PREFIX) or key.endswith("/settings.json"):
            continue
        data = path.read_bytes()
        if key.endswith("/" + SETTINGS_FILE):
            # The run's settings, as far as they change output (concurrency and time limits may differ).
            data = json.dumps(output_fields(json.loads(data)), sort_keys=True).encode()
        elif key.endswith(".json"):
            data = json.dumps(_without_timings(json.loads(data)), sort_keys=True).encode()
        found[key] = hashlib.sha256(data).hexdigest()
    return found


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def wipe_outputs(store_root: str) -> None:
    """Back to the seeded state: no run, no model versions, no cache (so the next run starts cold too)."""
    for child in Path(store_root).iterdir():
        if child.name != "catalog":
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def most_at_once(intervals: list[tuple]) -> int:
    """The most intervals (start, end) that overlap at any moment."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:  # an end sorts before a start at the same moment: touching is not overlapping
        running += step
        peak = max(peak, running)
    return peak


def test_nightly_dag_on_celery_workers_matches_the_local_executor_run(tiny_night, tmp_path):
    settings = tiny_night
    # The baseline: the same night on one machine, the scheduler's own task processes (LocalExecutor).
    with LocalCeleryCluster(settings, tmp_path / "local", {}, executor="LocalExecutor") as single:
        run_id = single.trigger(DS)
        state = single.wait(run_id, timeout_s=1200)
        assert state == "success", f"LocalExecutor run ended {state}:\n{single.logs()}"
    local = outputs(settings.store_root)
    wipe_outputs(settings.store_root)

    # The GPU worker takes two tasks at once, so only the pool (and the DAG's cap) keeps GPU work to 1.
    cluster = LocalCeleryCluster(settings, tmp_path / "cluster", {"default": 2, "gpu": 2})
    with cluster:
        run_id = cluster.trigger(DS)
        state = cluster.wait(run_id, timeout_s=1200)
        tasks = cluster.task_instances(run_id)
        assert state == "success", f"run ended {state}:\n{cluster.logs()}"
        # The publish task's Asset event, and nothing else, starts the consumer, which reads the manifest.
        (consumer,) = cluster.wait_for_runs(CONSUMER, timeout_s=300)
        consumer_log = cluster.task_log(CONSUMER, consumer["run_id"], "read_published_creatives")
    assert consumer["run_type"] == "asset_triggered" and consumer["state"] == "success", consumer

    assert {t["state"] for t in tasks} == {"success"}
    ran_on = {(t["task_id"], t["map_index"]): t["hostname"] for t in tasks}
    assert set(ran_on.values()) == {"worker-default", "worker-gpu"}
    for (task_id, index), worker in ran_on.items():
        expected = "worker-gpu" if task_id in GPU_TASKS else "worker-default"
        assert worker == expected, f"{task_id}[{index}] ran on {worker}"
    assert sum(task_id == "generate" for task_id, _ in ran_on) > 1
    assert sum(task_id == "keywords" for task_id, _ in ran_on) > 1
    assert all(t["queue"] == "gpu" for t in tasks if t["task_id"] in GPU_TASKS)

    # Every GPU task waited for the GPU pool's one slot (the LLM pool is for remote LLM backends: unused here).
    in_pool = [(t["start_date"], t["end_date"]) for t in tasks if t["pool"] == settings.pools.gpu]
    assert {t["task_id"] for t in tasks if t["pool"] == settings.pools.gpu} == GPU_TASKS
    assert len(in_pool) > settings.pools.gpu_slots, "too few GPU tasks to show a cap"
    assert most_at_once(in_pool) <= settings.pools.gpu_slots, "the GPU pool ran more tasks at once than its slots"

    celery = outputs(settings.store_root)
    assert sorted(celery) == sorted(local)
    differing = sorted(key for key in local if celery[key] != local[key])
    assert not differing, f"outputs differ between the Celery and the LocalExecutor run: {differing}"
    assert any(key.endswith(".png") and key.startswith("creatives/") for key in local)

    manifests = [key for key in celery if key.startswith(f"manifests/ds={DS}/") and key.endswith("manifest.parquet")]
    rows = sum(len(pd.read_parquet(Path(settings.store_root) / key)) for key in manifests)
    assert f"pmg published {DS}: {rows} rows (event said {rows})" in consumer_log, consumer_log[-3000:]

    # Nothing left behind: both clusters' metadata databases are gone.
    for database in (single.database, cluster.database):
        assert not database_exists(database), f"database {database} still exists"
