"""Running the real nightly DAG through Airflow from the command line (`pmg run`, `pmg demo run`).

Airflow runs for real (`airflow dags test`, a SQLite metadata database in the pmg home): the same DAG file,
the same tasks, the same stage functions a production scheduler runs, on the warehouse and store the
settings name. `airflow dags test` exits 0 and calls the run a success even when it ran no task (a date
before the DAG's start_date, say), so the run is judged by what Airflow recorded, not by the exit code:
the DAG run's state and the state of every task instance.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pmg_tasks.settings import Settings

DAGS_FOLDER = Path(__file__).resolve().parents[1] / "dags"
PLUGINS_FOLDER = DAGS_FOLDER.parent / "plugins"
DAG_ID = "pmg_nightly"
# Task states after which a run has done what it was asked; anything else means it has not.
DONE_STATES = {"success", "skipped"}


class NightlyRunError(RuntimeError):
    """Airflow did not run the nightly DAG to success; the message says why and where the log is, and
    `run` (where Airflow recorded one) what it did run."""

    def __init__(self, message: str, run: NightlyRun | None = None):
        super().__init__(message)
        self.run = run


@dataclass(frozen=True)
class NightlyRun:
    """What Airflow recorded for one run of the nightly DAG."""

    ds: str
    log_file: Path
    run_id: str = ""
    state: str = ""
    task_states: dict[str, int] = field(default_factory=dict)
    # The `extra` of every Asset event the run emitted (publish's pmg_creative_manifests), oldest first.
    asset_events: list[dict] = field(default_factory=list)


def airflow_env(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for an Airflow process that runs pmg's DAGs with these settings, on this machine;
    `extra` adds variables (an `AIRFLOW_CONN_AWS_DEFAULT` connection, say)."""
    airflow_home = settings.home / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.to_env(), **(extra or {})}
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
            # `airflow dags test` (3.3.2) fails a run that finished when its DAG has a DeadlineAlert: it looks
            # the alerts up by id, and the DAG it runs carries them without ids. Nothing would fire one
            # here anyway (no triggerer runs), so a `pmg run` leaves the deadline out.
            "PMG_WATCHING__DEADLINE": "False",
            # The environment's bin first: Airflow spawns `airflow` by name.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    return env


def _airflow(env: dict[str, str], *args: str, log_file: Path | None = None) -> None:
    airflow = shutil.which("airflow", path=env["PATH"])
    if airflow is None:
        raise NightlyRunError("the airflow command is not on PATH: run `make setup` first")
    if log_file is None:
        subprocess.run([airflow, *args], env=env, check=True, stdout=subprocess.DEVNULL)
        return
    with open(log_file, "w") as log:
        result = subprocess.run([airflow, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise NightlyRunError(
            f"`airflow {' '.join(args)}` failed (exit {result.returncode}); log: {log_file}\n{_tail(log_file)}"
        )


def pool_specs(settings: Settings) -> list[tuple[str, int, str]]:
    """pmg's pools as (name, slots, description): the same slot counts the DAG caps its tasks with."""
    return [
        (settings.pools.gpu, settings.pools.gpu_slots, "pmg: GPU tasks (diffusion, token training, local LLMs)"),
        (settings.pools.llm, settings.pools.llm_slots, "pmg: keyword and headline tasks without a local model"),
    ]


def set_pools(settings: Settings, env: dict[str, str]) -> list[tuple[str, int, str]]:
    """Create or resize pmg's pools in the Airflow that `env` names; safe to repeat."""
    specs = pool_specs(settings)
    for name, slots, what in specs:
        _airflow(env, "pools", "set", name, str(slots), what)
    return specs


def prepare_airflow(settings: Settings, extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Migrate the metadata database and create pmg's pools; safe to repeat."""
    env = airflow_env(settings, extra_env)
    _airflow(env, "db", "migrate")
    set_pools(settings, env)
    return env


def logical_date_for(ds: str) -> str:
    """The logical date of the run that processes `ds`: a run on day D processes D - 1."""
    return (dt.date.fromisoformat(ds) + dt.timedelta(days=1)).isoformat()


def run_nightly_dag(
    settings: Settings, ds: str, dag_id: str = DAG_ID, *, extra_env: Mapping[str, str] | None = None,
    conf: Mapping | None = None, log_name: str = "",
) -> NightlyRun:
    """Run pmg_nightly (or another pmg DAG, with `conf` as its params, e.g. `{"publish_partial": true}`) for
    `ds` through Airflow and check what it ran. Raises NightlyRunError, with the reason, when Airflow failed,
    or ran no task, or left a task short of success (a task a dry run skips counts as done). `extra_env`
    reaches the Airflow processes; `log_name` names the log file of this run."""
    dt.date.fromisoformat(ds)  # a bad date fails here, not inside Airflow
    env = prepare_airflow(settings, extra_env)
    log_dir = settings.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"dags-test-{dag_id}-{ds}{'-' + log_name if log_name else ''}.log"
    conf_args = ("--conf", json.dumps(dict(conf))) if conf else ()
    try:
        _airflow(env, "dags", "test", dag_id, logical_date_for(ds), *conf_args, log_file=log_file)
    except NightlyRunError as failed:
        # A failed run still says what Airflow recorded of it, where it recorded anything.
        try:
            recorded = _recorded_run(env, logical_date_for(ds), dag_id)
        except NightlyRunError:
            raise failed from None
        raise NightlyRunError(str(failed), run=_nightly_run(ds, log_file, recorded)) from failed
    recorded = _recorded_run(env, logical_date_for(ds), dag_id)
    run = _nightly_run(ds, log_file, recorded)
    problem = run_problem(run, recorded.get("start_date"), dag_id)
    if problem:
        raise NightlyRunError(f"{problem}; log: {log_file}\n{_tail(log_file)}", run=run)
    return run


def _nightly_run(ds: str, log_file: Path, recorded: dict) -> NightlyRun:
    return NightlyRun(
        ds=ds, log_file=log_file, run_id=recorded.get("run_id") or "", state=recorded.get("state") or "",
        task_states=recorded.get("task_states") or {}, asset_events=recorded.get("asset_events") or [],
    )


def run_problem(run: NightlyRun, dag_start_date: str | None, dag_id: str = DAG_ID) -> str:
    """Why `run` is not a finished nightly run ('' when it is)."""
    where = f"{dag_id} for ds={run.ds} (logical date {logical_date_for(run.ds)})"
    if not run.run_id:
        return f"Airflow recorded no run of {where}"
    if not run.task_states:
        reason = "Airflow created the run but ran no task"
        if dag_start_date and logical_date_for(run.ds) < dag_start_date[:10]:
            earliest = dt.date.fromisoformat(dag_start_date[:10]) - dt.timedelta(days=1)
            reason += (
                f": its logical date is before the DAG's start_date {dag_start_date[:10]}, and Airflow runs "
                f"no task before a DAG's start_date. The earliest date pmg_nightly processes is {earliest}"
            )
        return f"{reason} ({where}, run {run.run_id}, state {run.state})"
    unfinished = {state: n for state, n in run.task_states.items() if state not in DONE_STATES}
    if unfinished or run.state != "success":
        states = ", ".join(f"{n} {state}" for state, n in sorted(run.task_states.items()))
        return f"{where} ended {run.state or 'without a state'}: tasks {states}"
    return ""


def _recorded_run(env: dict[str, str], logical_date: str, dag_id: str = DAG_ID) -> dict:
    """The latest run of the DAG at `logical_date`, as the metadata database has it (a child process, so
    Airflow reads the environment this run used)."""
    result = subprocess.run(
        [sys.executable, "-m", "pmg_tasks.airflow_run", dag_id, logical_date],
        env=env, capture_output=True, text=True,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise NightlyRunError(f"could not read the run back from Airflow's metadata database:\n{result.stderr[-2000:]}")
    return json.loads(lines[-1])


def _describe_run(dag_id: str, logical_date: str) -> dict:
    """Inside the Airflow environment: the latest run at `logical_date`, its task states, the DAG's
    start_date."""
    from airflow.models import DagRun, TaskInstance
    from airflow.models.asset import AssetEvent
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    start_of_day = dt.datetime.fromisoformat(logical_date).replace(tzinfo=dt.UTC)
    with create_session() as session:
        run = session.scalars(
            select(DagRun)
            .where(
                DagRun.dag_id == dag_id,
                DagRun.logical_date >= start_of_day,
                DagRun.logical_date < start_of_day + dt.timedelta(days=1),
            )
            .order_by(DagRun.run_after.desc())
            .limit(1)
        ).first()
        dag = SerializedDagModel.get_dag(dag_id, session=session)
        start = getattr(dag, "start_date", None) if dag is not None else None
        if run is None:
            return {"start_date": start.isoformat() if start else None}
        states = Counter(
            _state_name(state)
            for state in session.scalars(
                select(TaskInstance.state).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)
            )
        )
        events = session.scalars(
            select(AssetEvent).where(AssetEvent.source_dag_id == dag_id, AssetEvent.source_run_id == run.run_id)
            .order_by(AssetEvent.id)
        )
        return {
            "run_id": run.run_id,
            "state": _state_name(run.state),
            "task_states": dict(states),
            "asset_events": [dict(event.extra or {}) for event in events],
            "start_date": start.isoformat() if start else None,
        }


def _state_name(state) -> str:
    """'success', 'failed', ... for Airflow's state enums; 'none' for a task that never got one."""
    return "none" if state is None else str(getattr(state, "value", state))


def _tail(log_file: Path, lines: int = 40) -> str:
    return "".join(log_file.read_text(errors="replace").splitlines(keepends=True)[-lines:])


if __name__ == "__main__":
    print(json.dumps(_describe_run(sys.argv[1], sys.argv[2])))
