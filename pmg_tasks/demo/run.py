"""`pmg demo run`: seed the embedded warehouse, build test-size models, and run the real nightly DAG.

Airflow runs for real (`airflow dags test`, SQLite metadata in the pmg home, LocalExecutor off): the same
DAG file, the same tasks, the same stage functions a production scheduler runs.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pmg_tasks.settings import Settings

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
PLUGINS_FOLDER = DAGS_FOLDER.parent / "plugins"
DAG_ID = "pmg_nightly"


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment for an Airflow process that runs pmg's DAGs with these settings, on this laptop."""
    airflow_home = settings.home / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.to_env()}
    env.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # A laptop: few worker processes (the default of 32 costs ~5 GB of memory).
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # The environment's bin first: Airflow spawns `airflow` by name.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    return env


def _airflow(env: dict[str, str], *args: str, log_file: Path | None = None) -> None:
    airflow = shutil.which("airflow", path=env["PATH"])
    if airflow is None:
        raise RuntimeError("the airflow command is not on PATH: run `make setup` first")
    if log_file is None:
        subprocess.run([airflow, *args], env=env, check=True, stdout=subprocess.DEVNULL)
        return
    with open(log_file, "w") as log:
        result = subprocess.run([airflow, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"`airflow {' '.join(args)}` failed (exit {result.returncode}); log: {log_file}\n{tail}")


def prepare_airflow(settings: Settings) -> dict[str, str]:
    """Migrate the metadata database and create pmg's pools; safe to repeat."""
    env = airflow_env(settings)
    _airflow(env, "db", "migrate")
    for name, slots, what in (
        (settings.pools.gpu, settings.pools.gpu_slots, "GPU diffusion tasks"),
        (settings.pools.llm, settings.pools.llm_slots, "LLM keyword extraction"),
    ):
        _airflow(env, "pools", "set", name, str(slots), f"pmg: {what}")
    return env


def run_nightly_dag(settings: Settings, ds: str) -> Path:
    """Run pmg_nightly for `ds` through Airflow; return the log file. Raises when the run fails."""
    env = prepare_airflow(settings)
    log_dir = settings.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"dags-test-{ds}.log"
    logical_date = (dt.date.fromisoformat(ds) + dt.timedelta(days=1)).isoformat()
    _airflow(env, "dags", "test", DAG_ID, logical_date, log_file=log_file)
    return log_file
