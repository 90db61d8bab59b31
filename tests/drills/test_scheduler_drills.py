"""Drills that need Airflow's own scheduler: a generate task killed and retried by Airflow, a night past
its deadline alerting through the triggerer, and a GPU worker deployed with other settings than the run's.

`airflow dags test` (the other drills) runs every task in one process, so killing it ends the whole run and
its "retry" is a rerun. Here the night runs on a local cluster (pmg_tasks/local_cluster.py, the
LocalExecutor: the scheduler starts a process per task, as a worker would) with one retry a second apart.
The process running one generate shard is killed with SIGKILL once that shard has recorded part of its
work; Airflow retries that task instance, and the retry finishes the shard. The same night has a
one-minute deadline it cannot meet: the scheduler notices the miss, the triggerer runs the notifier.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from pmg_tasks.airflow_run import DAG_ID
from pmg_tasks.layout import shard_record_prefix, shard_result_key
from pmg_tasks.local_cluster import LocalCeleryCluster, missing_servers
from pmg_tasks.store import open_store
from pmg_tasks.watch.alerts import ALERT_PREFIX
from tests.drills.conftest import DS, write_figures
from tests.drills.test_drills import creatives_check

pytestmark = [
    pytest.mark.night, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500),
    pytest.mark.skipif(bool(missing_servers()), reason=f"a local Airflow cluster: {missing_servers()}"),
]


@pytest.fixture
def watched_night(settings, test_size_models):
    """A small night with several generate shards that record every request, one retry per task a second
    later, and a deadline one minute after the run is queued."""
    from pmg_tasks.cli import seed_demo

    tuned = settings.model_copy(update={
        "models": test_size_models,
        "pools": settings.pools.model_copy(update={"gpu_slots": 1, "llm_slots": 1}),
        "retries": settings.retries.model_copy(update={"per_task": 1, "delay_s": 1}),
        "generation": settings.generation.model_copy(update={"requests_per_shard": 6, "checkpoint_requests": 1}),
        "watching": settings.watching.model_copy(update={"deadline": True, "finish_within_min": 1}),
    })  # fmt: skip
    seed_demo(tuned, DS, users=30, items=24, days=4, overwrite_campaigns=True)
    return tuned


class ShardKiller(threading.Thread):
    """Waits for a running generate task whose shard has recorded a part but not its result, then kills
    that task's process (titled `airflow worker -- <task instance id>`) with SIGKILL."""

    def __init__(self, cluster: LocalCeleryCluster, run_id: str, store_root: Path, timeout_s: float = 900):
        super().__init__(daemon=True)
        self.cluster, self.run_id, self.root, self.timeout_s = cluster, run_id, store_root, timeout_s
        self.killed: dict | None = None
        self.stop = threading.Event()

    def run(self):
        deadline = time.monotonic() + self.timeout_s
        while not self.stop.is_set() and time.monotonic() < deadline and self.killed is None:
            running = self.cluster.query(
                "SELECT id, map_index FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = 'generate' "
                "AND state = 'running' AND try_number = 1", (DAG_ID, self.run_id),
            )  # fmt: skip
            for ti_id, index in running:
                parts = self.root / shard_record_prefix(DS, index)
                if any(parts.glob("part-*.parquet")) and not (self.root / shard_result_key(DS, index)).exists():
                    pid = task_process(str(ti_id))
                    if pid is not None:
                        os.kill(pid, signal.SIGKILL)
                        self.killed = {"map_index": index, "pid": pid,
                                       "parts_before_kill": len(list(parts.glob("part-*.parquet")))}  # fmt: skip
                        return
            time.sleep(0.05)


def task_process(ti_id: str) -> int | None:
    """The PID of the process running task instance `ti_id` (Airflow sets its title), if it runs now."""
    title = f"airflow worker -- {ti_id}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().rstrip(b"\0").startswith(title):
                    return int(entry.name)
            except OSError:
                continue
    return None


def test_drill_1_airflow_retries_a_killed_generate_task_and_a_missed_deadline_alerts(watched_night, tmp_path):
    settings = watched_night
    store = open_store(settings)
    with LocalCeleryCluster(settings, tmp_path / "cluster", {}, executor="LocalExecutor") as cluster:
        run_id = cluster.trigger(DS)
        killer = ShardKiller(cluster, run_id, Path(store.root))
        killer.start()
        state = cluster.wait(run_id, timeout_s=1200)
        killer.stop.set()
        killer.join(timeout=10)
        tasks = cluster.task_instances(run_id)
        tries = dict(cluster.query(
            "SELECT map_index, try_number FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = 'generate'",
            (DAG_ID, run_id)))  # fmt: skip
        missed = cluster.query(
            "SELECT d.missed FROM deadline d JOIN dag_run r ON r.id = d.dagrun_id WHERE r.run_id = %s", (run_id,))
        alerts = [line for line in cluster.process_logs("triggerer").splitlines() if ALERT_PREFIX in line]
        retry_log = (cluster.task_log(DAG_ID, run_id, "generate", attempt=2, map_index=killer.killed["map_index"])
                     if killer.killed else "")  # fmt: skip
        assert state == "success", f"run ended {state}:\n{cluster.logs()}"

    killed = killer.killed
    assert killed is not None, "no generate shard was caught half-way: the shards finished before the kill"
    # Airflow itself retried exactly the killed task instance, and its second try finished the shard.
    assert tries[killed["map_index"]] == 2
    assert all(n == 1 for index, n in tries.items() if index != killed["map_index"])
    assert {t["state"] for t in tasks} == {"success"}
    assert store.exists(shard_result_key(DS, killed["map_index"]))
    assert not store.list_keys(shard_record_prefix(DS, killed["map_index"]))
    # The retry read back what the killed try had recorded instead of drawing it again.
    resumed = re.search(rf"shard {killed['map_index']}: \d+ requests for \d+ users, (\d+) already recorded", retry_log)
    assert resumed is not None, f"the retry's log does not say what it found recorded:\n{retry_log[-3000:]}"
    assert int(resumed[1]) >= killed["parts_before_kill"] > 0
    check = creatives_check(store, DS)
    assert check == {"duplicates": 0, "missing_objects": 0, "partial_files": 0}

    # The deadline: recorded as missed, and the notifier's line came out of the triggerer.
    assert missed == [(True,)]
    deadline_alerts = [line for line in alerts if '"deadline_missed"' in line]
    assert deadline_alerts, "no deadline_missed alert in the triggerer's log"
    # The log formatter may add fields after the JSON: read the JSON object alone.
    line = deadline_alerts[0]
    record, _ = json.JSONDecoder().raw_decode(line[line.index(ALERT_PREFIX) + len(ALERT_PREFIX):])
    assert record["event"] == "deadline_missed" and record["run_id"] == run_id
    write_figures({
        "1_generate_task_killed_and_retried_by_airflow": {
            "killed_shard_tries": tries[killed["map_index"]], "parts_before_kill": killed["parts_before_kill"],
            "requests_read_back_by_the_retry": int(resumed[1]), **check},
        "deadline_missed_alert": {"alerts": len(deadline_alerts), "deadline_missed": True},
    })  # fmt: skip


def test_a_gpu_worker_deployed_with_other_settings_fails_its_tasks_and_names_the_field(settings, test_size_models,
                                                                                     tmp_path):  # fmt: skip
    """The GPU worker was deployed with another inference_steps than the rest: every task it takes fails at
    once, without a retry, naming the field and both values; publish refuses; nothing is generated or
    published."""
    from pmg_tasks.cli import seed_demo
    from pmg_tasks.layout import success_key

    night = settings.model_copy(update={
        "models": test_size_models,
        "pools": settings.pools.model_copy(update={"gpu_queue": "gpu", "gpu_slots": 1, "llm_slots": 1}),
        "retries": settings.retries.model_copy(update={"per_task": 1, "delay_s": 1}),
        "generation": settings.generation.model_copy(update={"inference_steps": 2}),
    })  # fmt: skip
    seed_demo(night, DS, users=24, items=16, days=3, overwrite_campaigns=True)
    store = open_store(night)
    cluster = LocalCeleryCluster(night, tmp_path / "cluster", {"default": 2, "gpu": 1},
                                 worker_env={"gpu": {"PMG_GENERATION__INFERENCE_STEPS": "3"}})  # fmt: skip
    with cluster:
        run_id = cluster.trigger(DS)
        state = cluster.wait(run_id, timeout_s=900)
        tasks = cluster.task_instances(run_id)
        failed = [t for t in tasks if t["state"] == "failed"]
        logs = {(t["task_id"], t["map_index"]): cluster.task_log(DAG_ID, run_id, t["task_id"], map_index=t["map_index"])
                for t in failed}  # fmt: skip
        tries = dict(cluster.query(
            "SELECT task_id, MAX(try_number) FROM task_instance WHERE dag_id = %s AND run_id = %s GROUP BY task_id",
            (DAG_ID, run_id)))  # fmt: skip

    assert state == "failed"
    # What the differing worker ran failed, each on its first and only try, naming the field and both values.
    on_gpu = [t for t in failed if t["hostname"] == "worker-gpu"]
    assert on_gpu, "no task on the GPU worker failed"
    for t in on_gpu:
        log = logs[(t["task_id"], t["map_index"])]
        assert tries[t["task_id"]] == 1, t["task_id"]
        assert "this worker's settings differ from the run's" in log, t["task_id"]
        assert "generation.inference_steps: run has 2, this worker 3" in log, t["task_id"]
        assert "Give every worker the same PMG_* settings" in log, t["task_id"]
    # The CPU stages succeeded; publish (which runs whatever happened) refused, naming the shards it lacks.
    assert [t["task_id"] for t in failed if t["hostname"] != "worker-gpu"] == ["publish"]
    assert "have no result for" in logs[("publish", -1)] and "publish_partial" in logs[("publish", -1)]
    succeeded = {t["task_id"] for t in tasks if t["state"] == "success" and t["hostname"] == "worker-default"}
    assert succeeded >= {"run_date", "extract", "validate", "histories", "plan"}
    assert not store.list_keys(f"creatives/ds={DS}/")
    assert not store.exists(success_key(DS))
