"""Stage counts go out through Airflow's own StatsD settings and into the run's stats folder."""

from __future__ import annotations

import time

from pmg_tasks.layout import run_key
from pmg_tasks.store import open_store, read_json, write_json
from pmg_tasks.watch import metrics
from tests.drills.conftest import StatsdListener


def test_counts_reach_a_statsd_listener_and_the_stats_folder(settings, monkeypatch):
    listener = StatsdListener()
    try:
        for name, value in {"STATSD_ON": "True", "STATSD_HOST": "127.0.0.1", "STATSD_PORT": str(listener.port),
                            "STATSD_PREFIX": "airflow"}.items():  # fmt: skip
            monkeypatch.setenv(f"AIRFLOW__METRICS__{name}", value)
        monkeypatch.setattr(metrics, "_INITIALIZED", False)
        store = open_store(settings)
        write_json(store, run_key("2026-11-20", "validation.json"),
                   {"valid": 90, "quarantined": 10, "by_rule": {"unknown_item": 7, "negative_dwell": 3, "duplicate_id": 0}})  # fmt: skip
        counts = metrics.record_stage_metrics(store, "2026-11-20", "validate", -1, 3, {"extracted": 100})
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "airflow.pmg.task.validate.succeeded" not in listener.counters():
            time.sleep(0.05)
        received = listener.counters()
    finally:
        listener.close()
        metrics._INITIALIZED = False  # the next emit sets up whatever backend its environment names
    assert received["airflow.pmg.events.quarantined.unknown_item"] == 7
    assert received["airflow.pmg.events.quarantined.negative_dwell"] == 3
    assert received["airflow.pmg.events.quarantined.duplicate_id"] == 0
    assert received["airflow.pmg.events.valid"] == 90
    assert received["airflow.pmg.task.retries"] == 2  # the third try succeeded
    written = read_json(store, metrics.metrics_key("2026-11-20", "validate"))
    assert written == {"task_id": "validate", "map_index": -1, **counts}
    assert metrics.metrics_key("2026-11-20", "generate", 3).endswith("stats/metrics/generate-00003.json")
