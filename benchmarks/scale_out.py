"""Scheduling overhead of the CeleryExecutor against the LocalExecutor, on a night of many generate shards.

    .venv/bin/python -m benchmarks.scale_out                  # 64 generate shards, test-size models
    .venv/bin/python -m benchmarks.scale_out --shards 16

The same night twice, each on a fresh local cluster (pmg_tasks/local_cluster.py: PostgreSQL metadata, the
scheduler, dag-processor, api-server and triggerer, all on loopback): once with the LocalExecutor, once with the
CeleryExecutor, a Redis broker and two workers (`default`, and `gpu` for the generate shards). One campaign
with per-user personalization over `--shards` users, one target, one candidate, one diffusion step and one
generation per shard, so the night is `--shards` generate tasks plus the fixed stages. With one GPU slot and
one LLM slot the generate shards run one at a time. Reported per executor:

    overhead     = the run's wall time (the scheduler's start to end) - the sum of its task durations
    idle         = the run's wall time - the time at least one task was running (gaps nothing filled)
    generate gap = (last shard's end - first shard's start) - the sum of the shards' durations

`overhead` is the issue's figure; it goes negative where tasks overlap (token_embeddings runs beside
plan and headlines), so `idle` and `generate gap` are the ones that read as scheduling cost: queueing, the
broker, starting task processes. Ratios are Celery / Local. Not a test: nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "scale_out.json"
DS = "2026-11-20"


def night_settings(home: Path, models, shards: int):
    """A night of exactly `shards` generate tasks (one generation each), everything else minimal."""
    from pmg_tasks.cli import seed_demo
    from pmg_tasks.settings import Settings

    settings = Settings(
        home=home, models=models, keyword_backend="catalog",
        pools={"gpu_queue": "gpu", "gpu_slots": 1, "llm_slots": 1}, retries={"per_task": 0},
        generation={"requests_per_shard": 1, "candidates_per_request": 1, "inference_steps": 1, "batch_size": 1,
                    "max_shards": 1024},
        keywords={"users_per_shard": 100_000}, token_embeddings={"steps_per_token": 0},
    )  # fmt: skip
    seed_demo(settings, DS, users=max(2 * shards, 40), items=30, days=3, overwrite_campaigns=True)
    start, end = dt.date.fromisoformat(DS) - dt.timedelta(days=10), dt.date.fromisoformat(DS) + dt.timedelta(days=10)
    from pmg_tasks.warehouse import connect

    with connect(settings) as warehouse:
        item = warehouse.fetch_rows("SELECT item_id FROM items ORDER BY item_id LIMIT 1")[0][0]
    # The campaigns folder holds one file per campaign: only this one tonight.
    folder = Path(settings.campaigns_file)
    for other in folder.glob("*.yaml"):
        other.unlink()
    (folder / "one-per-user.yaml").write_text(
        f"start_date: {start}\nend_date: {end}\ntarget_items: [{item}]\npersonalization: user\n"
        f"audience: {{max_users: {shards}}}\n"
    )
    return settings


def run_night(settings, workdir: Path, executor: str) -> dict:
    from pmg_tasks.local_cluster import LocalCeleryCluster

    workers = {"default": 1, "gpu": 1} if executor == "CeleryExecutor" else {}
    with LocalCeleryCluster(settings, workdir, workers, executor=executor) as cluster:
        run_id = cluster.trigger(DS)
        state = cluster.wait(run_id, timeout_s=3000)
        tasks = cluster.task_instances(run_id)
        started, ended = cluster.run_window(run_id)
    if state != "success":
        raise RuntimeError(f"{executor} run ended {state}; logs in {workdir}")
    first = min(t["start_date"] for t in tasks)
    last = max(t["end_date"] for t in tasks)
    busy = sum(t["duration"] or 0.0 for t in tasks)
    wall = (ended - started).total_seconds()
    generate = sorted((t for t in tasks if t["task_id"] == "generate"), key=lambda t: t["start_date"])
    generate_span = (max(t["end_date"] for t in generate) - generate[0]["start_date"]).total_seconds()
    generate_busy = sum(t["duration"] for t in generate)
    return {
        "tasks": len(tasks),
        "idle_s": round(wall - covered_seconds([(t["start_date"], t["end_date"]) for t in tasks]), 2),
        "generate_gap_s": round(generate_span - generate_busy, 2),
        "generate_gap_per_shard_s": round((generate_span - generate_busy) / max(1, len(generate) - 1), 3),
        "generate_tasks": sum(t["task_id"] == "generate" for t in tasks),
        "wall_s": round(wall, 2),
        "first_task_to_last_s": round((last - first).total_seconds(), 2),
        "sum_task_durations_s": round(busy, 2),
        "overhead_s": round(wall - busy, 2),
        "overhead_per_task_s": round((wall - busy) / len(tasks), 3),
        "generate_mean_duration_s": round(
            sum(t["duration"] for t in tasks if t["task_id"] == "generate")
            / max(1, sum(t["task_id"] == "generate" for t in tasks)), 3),
    }  # fmt: skip


def covered_seconds(intervals: list[tuple]) -> float:
    """How long at least one of the (start, end) intervals was open."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += (end - start).total_seconds()
            reach = end
        elif end > reach:
            total += (end - reach).total_seconds()
            reach = end
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from pmg_tasks.local_cluster import missing_servers
    from pmg_tasks.models import build_test_size_models

    reason = missing_servers()
    if reason:
        print(f"benchmarks.scale_out: skipped: {reason}")
        return 0
    results = {}
    with tempfile.TemporaryDirectory(prefix="pmg-scale-out-") as tmp:
        models = build_test_size_models(Path(tmp) / "models")
        for executor in ("LocalExecutor", "CeleryExecutor"):
            home = Path(tmp) / executor
            settings = night_settings(home / "pmg", models, args.shards)
            started = time.monotonic()
            results[executor] = run_night(settings, home / "cluster", executor)
            print(f"{executor}: {json.dumps(results[executor])} ({time.monotonic() - started:.0f} s with start-up)",
                  flush=True)
    local, celery = results["LocalExecutor"], results["CeleryExecutor"]
    report = {
        "command": "python -m benchmarks.scale_out " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average": os.getloadavg()},
        "shards": args.shards, **results,
        "celery_over_local_idle": round(celery["idle_s"] / local["idle_s"], 2) if local["idle_s"] > 0 else None,
        "celery_over_local_generate_gap": (
            round(celery["generate_gap_s"] / local["generate_gap_s"], 2) if local["generate_gap_s"] > 0 else None),
    }  # fmt: skip
    for name, figures in results.items():
        print(f"{name}: wall {figures['wall_s']} s, tasks {figures['sum_task_durations_s']} s, overhead "
              f"{figures['overhead_s']} s, idle {figures['idle_s']} s, generate gap {figures['generate_gap_per_shard_s']} s/shard")
    print(f"Celery / Local: idle {report['celery_over_local_idle']}x, generate gap {report['celery_over_local_generate_gap']}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
