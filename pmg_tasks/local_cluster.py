"""A CeleryExecutor Airflow on this machine, for proving and measuring the distributed setup without Docker.

The same processes a cluster runs (docker/compose.yaml): Airflow's metadata in a PostgreSQL database made
for the cluster and dropped after it, a Redis database as the Celery broker, the scheduler, the
dag-processor, the api-server (the execution API the workers report to), the triggerer (where a missed
deadline's notifier runs) and one Celery worker per queue, each named so the metadata database records which
worker ran each task. Everything binds 127.0.0.1 on a free port, is started here and stopped by PID.

The scheduler creates runs the way production's does (an Asset event starts the DAGs scheduled on it), but
pmg_nightly's own cron is off here (`watching.schedule` empty): it runs only the nights it is asked for.

    with LocalCeleryCluster(settings, workdir, {"default": 2, "gpu": 2}) as cluster:
        run_id = cluster.trigger(ds)
        state = cluster.wait(run_id)
        rows = cluster.task_instances(run_id)
        consumer_runs = cluster.wait_for_runs("pmg_creatives_consumer")
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pmg_tasks.airflow_run import DAG_ID, DAGS_FOLDER, PLUGINS_FOLDER, logical_date_for, set_pools
from pmg_tasks.settings import Settings

POSTGRES = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)
# The variable a worker's task processes read their recorded hostname from (see worker_hostname).
WORKER_NAME_VARIABLE = "LOCAL_CLUSTER_WORKER"
FINISHED_RUN_STATES = {"success", "failed"}


class ClusterError(RuntimeError):
    """A cluster process did not start or the run did not finish; the message names the log to read."""


def missing_servers() -> str:
    """Why a local cluster cannot start here ('' when PostgreSQL and Redis both answer on loopback)."""
    absent = []
    for name, address in (("PostgreSQL", POSTGRES), ("Redis", REDIS)):
        try:
            socket.create_connection(address, timeout=1).close()
        except OSError:
            absent.append(f"{name} on {address[0]}:{address[1]}")
    if not absent:
        try:
            import celery  # noqa: F401
            import redis  # noqa: F401
        except ImportError as error:
            return f"the Celery provider is not installed ({error}): run `make setup`"
        if _postgres_user() is None:
            return "PostgreSQL on 127.0.0.1:5432 takes neither user postgres nor root without a password"
    return " and ".join(absent) + " not reachable" if absent else ""


def worker_hostname() -> str:
    """Airflow's [core] hostname_callable for a local worker: its queue's name, so every task instance
    records which worker ran it (all workers share this machine's hostname)."""
    return os.environ.get(WORKER_NAME_VARIABLE) or socket.getfqdn()


def _postgres_user() -> str | None:
    import psycopg2

    for user in ("postgres", "root"):
        try:
            psycopg2.connect(host=POSTGRES[0], port=POSTGRES[1], user=user, dbname="postgres").close()
            return user
        except psycopg2.OperationalError:
            continue
    return None


def _admin(user: str, statement: str) -> None:
    """One statement outside a transaction (CREATE and DROP DATABASE refuse to run inside one)."""
    import psycopg2

    conn = psycopg2.connect(host=POSTGRES[0], port=POSTGRES[1], user=user, dbname="postgres")
    try:
        conn.autocommit = True
        conn.cursor().execute(statement)
    finally:
        conn.close()


def database_exists(name: str) -> bool:
    """Whether PostgreSQL on loopback has a database of that name."""
    import psycopg2

    user = _postgres_user()
    if user is None:
        return False
    conn = psycopg2.connect(host=POSTGRES[0], port=POSTGRES[1], user=user, dbname="postgres")
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        return cursor.fetchone() is not None
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen
    log: Path


class LocalCeleryCluster:
    """The cluster for one `settings`; `workers` maps each Celery queue to its worker's concurrency, and
    `worker_env` a queue to variables only its worker gets.
    `executor="LocalExecutor"` (and no workers) runs the same processes with the scheduler's own task
    processes instead of Celery's: the baseline the distributed run is measured against."""

    def __init__(self, settings: Settings, workdir: Path, workers: dict[str, int],
                 executor: str = "CeleryExecutor", worker_env: dict[str, dict[str, str]] | None = None):
        if executor == "LocalExecutor" and workers:
            raise ValueError("the LocalExecutor runs tasks in the scheduler's own processes: give no workers")
        self.settings = settings
        self.workdir = Path(workdir)
        self.workers = workers
        # Per queue, variables its worker gets on top of the cluster's (a worker deployed differently).
        self.worker_env = worker_env or {}
        self.executor = executor
        self.database = f"pmg_cluster_{secrets.token_hex(4)}"
        self.processes: list[_Process] = []
        self.env: dict[str, str] = {}
        self._user = ""
        self._redis_db: int | None = None

    # --- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> LocalCeleryCluster:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        reason = missing_servers()
        if reason:
            raise ClusterError(reason)
        self._user = _postgres_user() or ""
        _admin(self._user, f'CREATE DATABASE "{self.database}"')
        self._redis_db = self._claim_redis_db()
        api_port = _free_port()
        self.env = self._environment(api_port)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._airflow("db", "migrate")
        set_pools(self.settings, self.env)
        self._spawn("api-server", "api-server", "--host", "127.0.0.1", "--port", str(api_port), "--workers", "1")
        self._spawn("scheduler", "scheduler")
        self._spawn("dag-processor", "dag-processor")
        self._spawn("triggerer", "triggerer")
        for queue, concurrency in self.workers.items():
            self._spawn(
                f"worker-{queue}", "celery", "worker", "--queues", queue, "--concurrency", str(concurrency),
                "--celery-hostname", f"{queue}@pmg-local", "--skip-serve-logs",
                extra_env={**self.worker_env.get(queue, {}), WORKER_NAME_VARIABLE: f"worker-{queue}"},
            )
        self._wait_for(lambda: _http_ok(f"http://127.0.0.1:{api_port}/api/v2/monitor/health"), "api-server", 120)
        self._wait_for(self._dag_serialized, f"{DAG_ID} parsed by the dag-processor", 180)

    def close(self) -> None:
        """Stop every process this cluster started (its process group, by the PID it was given), then drop
        the database and empty the Redis database it used."""
        for process in reversed(self.processes):
            if process.popen.poll() is None:
                try:
                    os.killpg(process.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in reversed(self.processes):
            try:
                process.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait(timeout=10)
        self.processes.clear()
        if self._redis_db is not None:
            import redis

            redis.Redis(host=REDIS[0], port=REDIS[1], db=self._redis_db).flushdb()
            self._redis_db = None
        if self._user:
            _admin(self._user, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            self._user = ""

    # --- what a test or a benchmark asks ---------------------------------------------------------------

    def trigger(self, ds: str) -> str:
        """Start the run of `ds` (the logical date a scheduled run that processes it would have)."""
        run_id = f"manual__pmg_{ds}_{secrets.token_hex(3)}"
        self._airflow("dags", "trigger", DAG_ID, "--run-id", run_id, "--logical-date",
                      f"{logical_date_for(ds)}T00:00:00+00:00")
        return run_id

    def wait(self, run_id: str, timeout_s: float = 900, dag_id: str = DAG_ID) -> str:
        """Wait for the run to finish; its final state."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self.query("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", (dag_id, run_id))
            if rows and rows[0][0] in FINISHED_RUN_STATES:
                return rows[0][0]
            self._check_alive()
            time.sleep(2)
        raise ClusterError(f"run {run_id} did not finish within {timeout_s:.0f} s; logs in {self.workdir}")

    def wait_for_runs(self, dag_id: str, timeout_s: float = 300) -> list[dict]:
        """Wait until `dag_id` has at least one run and all of its runs have finished (a DAG the scheduler
        starts by itself, such as one scheduled on an Asset); each run's run_id, run_type and state."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self.query("SELECT run_id, run_type, state FROM dag_run WHERE dag_id = %s ORDER BY id", (dag_id,))
            if rows and all(state in FINISHED_RUN_STATES for _, _, state in rows):
                return [{"run_id": r, "run_type": t, "state": state} for r, t, state in rows]
            self._check_alive()
            time.sleep(2)
        raise ClusterError(f"{dag_id} had no finished run within {timeout_s:.0f} s; logs in {self.workdir}")

    def task_instances(self, run_id: str, dag_id: str = DAG_ID) -> list[dict]:
        """Every task instance of the run: task_id, map_index, state, hostname (the worker), queue, pool,
        start and end (datetimes), duration (seconds)."""
        columns = ["task_id", "map_index", "state", "hostname", "queue", "pool", "start_date", "end_date",
                   "duration"]
        rows = self.query(
            f"SELECT {', '.join(columns)} FROM task_instance WHERE dag_id = %s AND run_id = %s "
            "ORDER BY start_date", (dag_id, run_id),
        )
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def task_log(self, dag_id: str, run_id: str, task_id: str, attempt: int = 1, map_index: int = -1) -> str:
        """What a task instance's try wrote to its log (the workers share this machine's AIRFLOW_HOME)."""
        folder = Path(self.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        log = folder / (f"map_index={map_index}" if map_index >= 0 else "") / f"attempt={attempt}.log"
        if not log.exists():
            raise ClusterError(f"no log of {dag_id}.{task_id}[{map_index}] try {attempt} in run {run_id}: {log}")
        return log.read_text(errors="replace")

    def process_logs(self, name: str) -> str:
        """Everything a cluster process (scheduler, triggerer, worker-gpu, ...) wrote to its own log."""
        (process,) = [p for p in self.processes if p.name == name]
        return process.log.read_text(errors="replace")

    def run_window(self, run_id: str) -> tuple[dt.datetime, dt.datetime]:
        """When the run started and ended, as the scheduler recorded it."""
        rows = self.query("SELECT start_date, end_date FROM dag_run WHERE dag_id = %s AND run_id = %s",
                          (DAG_ID, run_id))
        return rows[0]

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        import psycopg2

        conn = psycopg2.connect(host=POSTGRES[0], port=POSTGRES[1], user=self._user, dbname=self.database)
        try:
            cursor = conn.cursor()
            cursor.execute(sql, args)
            return cursor.fetchall()
        finally:
            conn.close()

    def logs(self) -> str:
        """The last lines of every process's log, for a failure message."""
        return "\n".join(f"--- {p.name} ({p.log}) ---\n{_tail(p.log)}" for p in self.processes)

    # --- inside ------------------------------------------------------------------------------------------

    def _environment(self, api_port: int) -> dict[str, str]:
        database = f"postgresql+psycopg2://{self._user}@{POSTGRES[0]}:{POSTGRES[1]}/{self.database}"
        # Nothing starts on its own schedule: only the nights asked for, and what their Asset events start.
        env = {**os.environ, **self.settings.to_env(), "PMG_WATCHING__SCHEDULE": ""}
        env.update({
            "AIRFLOW_HOME": str(self.workdir / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS[0]}:{REDIS[1]}/{self._redis_db}",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{self._user}@{POSTGRES[0]}:{POSTGRES[1]}/{self.database}",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.settings.pools.default_queue,
            # Every process signs and checks the workers' tokens with one key, made for this cluster.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        })  # fmt: skip
        return env

    def _claim_redis_db(self) -> int:
        """An empty Redis database (1-15) for this cluster's broker, so nothing else's keys are touched."""
        import redis

        for number in range(15, 0, -1):
            if redis.Redis(host=REDIS[0], port=REDIS[1], db=number).dbsize() == 0:
                return number
        raise ClusterError("no empty Redis database (1-15) on 127.0.0.1:6379 for the Celery broker")

    def _airflow(self, *args: str) -> str:
        result = subprocess.run([_airflow_command(), *args], env=self.env, capture_output=True, text=True)
        if result.returncode != 0:
            raise ClusterError(f"`airflow {' '.join(args)}` failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
        return result.stdout

    def _spawn(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> None:
        log = self.workdir / f"{name}.log"
        with open(log, "w") as out:
            popen = subprocess.Popen(
                [_airflow_command(), *args], env={**self.env, **(extra_env or {})}, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,  # its own group: stopped with its children
            )
        self.processes.append(_Process(name, popen, log))

    def _check_alive(self) -> None:
        for process in self.processes:
            if process.popen.poll() is not None:
                raise ClusterError(f"{process.name} exited ({process.popen.returncode}):\n{_tail(process.log)}")

    def _wait_for(self, ready, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            if ready():
                return
            time.sleep(1)
        raise ClusterError(f"{what}: not ready within {timeout_s:.0f} s\n{self.logs()}")

    def _dag_serialized(self) -> bool:
        return bool(self.query("SELECT 1 FROM serialized_dag WHERE dag_id = %s", (DAG_ID,)))


def _airflow_command() -> str:
    return str(Path(sys.executable).parent / "airflow")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""
