"""`pmg run`: the real DAG through Airflow, judged by what Airflow recorded, never by its exit code alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from pmg_tasks.airflow_run import NightlyRun, run_problem
from pmg_tasks.cli import main

START = "2026-01-01T00:00:00+00:00"


def test_a_run_with_every_task_done_is_fine():
    run = NightlyRun("2026-11-20", Path("log"), "manual__1", "success", {"success": 12, "skipped": 1})
    assert run_problem(run, START) == ""


def test_a_run_before_the_start_date_says_why_nothing_ran():
    problem = run_problem(NightlyRun("2018-12-01", Path("log"), "manual__1", "success", {}), START)
    assert "ran no task" in problem and "start_date 2026-01-01" in problem
    assert "earliest date pmg_nightly processes is 2025-12-31" in problem


def test_a_run_with_a_task_short_of_success_names_the_states():
    run = NightlyRun("2026-11-20", Path("log"), "manual__1", "failed", {"success": 3, "failed": 1,
                                                                       "upstream_failed": 7})
    assert run_problem(run, START) == (
        "pmg_nightly for ds=2026-11-20 (logical date 2026-11-21) ended failed: tasks 1 failed, 3 success, "
        "7 upstream_failed"
    )
    assert "recorded no run" in run_problem(NightlyRun("2026-11-20", Path("log")), START)
    # Every task succeeded, but Airflow still calls the run something else: not fine either.
    assert "ended running" in run_problem(NightlyRun("2026-11-20", Path("log"), "r", "running", {"success": 1}), START)


def test_pmg_run_checks_models_campaigns_and_date_before_starting_airflow(settings, monkeypatch, capsys):
    monkeypatch.setenv("PMG_HOME", str(settings.home))
    for name in ("PMG_MODELS__DIFFUSION", "PMG_MODELS__CLIP"):
        monkeypatch.delenv(name, raising=False)
    assert main(["run", "--ds", "2026-11-20"]) == 2
    assert "PMG_MODELS__DIFFUSION and PMG_MODELS__CLIP are not set" in capsys.readouterr().err

    monkeypatch.setenv("PMG_MODELS__DIFFUSION", "/models/sd")
    monkeypatch.setenv("PMG_MODELS__CLIP", "/models/clip")
    assert main(["run", "--ds", "2026-11-20", "--campaigns", str(settings.home / "nowhere.yaml")]) == 2
    err = capsys.readouterr().err
    assert "nowhere.yaml" in err and "--campaigns" in err
    assert main(["run", "--ds", "20-11-2026"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err
    assert not (settings.home / "airflow").exists()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pmg_run_fails_loudly_when_airflow_runs_nothing(seeded_settings, test_size_models, monkeypatch, capsys):
    """`airflow dags test pmg_nightly 2018-12-02` exits 0 and calls the run a success without running a task."""
    monkeypatch.setenv("PMG_HOME", str(seeded_settings.home))
    for role, path in test_size_models.model_dump().items():
        monkeypatch.setenv(f"PMG_MODELS__{role.upper()}", path)

    assert main(["run", "--ds", "2018-12-01"]) == 1
    err = capsys.readouterr().err
    assert "Airflow created the run but ran no task" in err
    assert "before the DAG's start_date 2026-01-01" in err and "2025-12-31" in err


@pytest.mark.integration
def test_pmg_pools_sets_the_slots_the_dag_caps_with(tmp_path):
    """`pmg pools` in a migrated Airflow: both pools, sized from the settings, and again after a change."""
    import json
    import os
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PMG_HOME": str(tmp_path / "pmg"), "PMG_POOLS__GPU_SLOTS": "3"}
    subprocess.run([bin_dir / "airflow", "db", "migrate"], env=env, check=True, capture_output=True)

    def pools() -> dict[str, int]:
        listed = subprocess.run([bin_dir / "airflow", "pools", "list", "-o", "json"], env=env, check=True,
                                capture_output=True, text=True).stdout
        return {p["pool"]: int(p["slots"]) for p in json.loads(listed[listed.index("["):])}

    result = subprocess.run([bin_dir / "pmg", "pools"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "pmg_gpu: 3 slots" in result.stdout
    assert {k: v for k, v in pools().items() if k.startswith("pmg_")} == {"pmg_gpu": 3, "pmg_llm": 1}
    env["PMG_POOLS__GPU_SLOTS"] = "8"
    subprocess.run([bin_dir / "pmg", "pools"], env=env, check=True, capture_output=True)
    assert pools()["pmg_gpu"] == 8
