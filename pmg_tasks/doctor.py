"""`pmg doctor`: is this machine ready for a night nobody watches? One line per check, each failure with its fix.

    ok    warehouse: postgresql+psycopg2://pmg:***@db/shop answers; tables events, items
    FAIL  models.clip: /models/clip has no config.json -- fix: set PMG_MODELS__CLIP to a save_pretrained folder

Checks: the warehouse connection and its tables, the object store (a probe key written, read and deleted),
every configured model path and whether it loads, the Airflow pools and queues the DAG needs, the campaigns
file, and the GPU extra where a GPU is present. Exits non-zero when any check fails.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pmg_tasks.settings import Settings

REQUIRED_TABLES = ("events", "items")
PROBE_PREFIX = "_doctor/"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    skipped: bool = False

    def line(self) -> str:
        status = "skip" if self.skipped else "ok" if self.ok else "FAIL"
        text = f"{status:<5} {self.name}: {self.detail}"
        return text if self.ok or not self.fix else f"{text} -- fix: {self.fix}"


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order a night needs them; a check that raises is a failure, never a crash."""
    from pmg_tasks.watch.run_settings import mask_secrets

    results = []
    for name, check in _checks(settings):
        try:
            results.extend(check())
        except Exception as error:  # a check must report, not crash the doctor
            results.append(Check(name, False, mask_secrets(f"{type(error).__name__}: {error}"),
                                 "see the error above"))  # fmt: skip
    return results


def _checks(settings: Settings) -> Iterator[tuple[str, Callable[[], list[Check]]]]:
    yield "warehouse", lambda: [check_warehouse(settings)]
    yield "store", lambda: [check_store(settings)]
    yield "models", lambda: check_models(settings)
    yield "airflow", lambda: check_airflow(settings)
    yield "campaigns", lambda: [check_campaigns(settings)]
    yield "gpu", lambda: [check_gpu()]


def check_warehouse(settings: Settings) -> Check:
    from pmg_tasks.warehouse import connect, warehouse_url

    url = warehouse_url(settings)
    duckdb_file = Path(url.removeprefix("duckdb:///")) if url.startswith("duckdb:///") else None
    if duckdb_file is not None and not duckdb_file.is_file():
        # Connecting would create an empty one, which is never what a night wants.
        return Check("warehouse", False, f"{url} does not exist",
                     "import data first (`pmg import events/items`, or `pmg demo seed`), or point "
                     "PMG_WAREHOUSE_URL at the warehouse")  # fmt: skip
    with connect(settings) as warehouse:
        where = warehouse.safe_url
        try:
            missing = [table for table in REQUIRED_TABLES if not warehouse.has_table(table)]
        except Exception as error:
            from pmg_tasks.watch.run_settings import mask_secrets

            return Check("warehouse", False, f"{where} does not answer ({mask_secrets(str(error)).splitlines()[0]})",
                         "check PMG_WAREHOUSE_URL (or the Airflow connection PMG_WAREHOUSE_CONN_ID names), the "
                         "server, the network and the credentials")  # fmt: skip
    if missing:
        return Check("warehouse", False, f"{where} has no table {', '.join(missing)}",
                     "create the tables with `pmg import ...` (or sql/ddl.sql), or point PMG_WAREHOUSE_URL at "
                     "the warehouse that has them")  # fmt: skip
    return Check("warehouse", True, f"{where} answers; tables {', '.join(REQUIRED_TABLES)}")


def check_store(settings: Settings) -> Check:
    from pmg_tasks.store import open_store

    store = open_store(settings)
    key = f"{PROBE_PREFIX}probe-{secrets.token_hex(6)}"
    payload = secrets.token_bytes(32)
    fix = ("check PMG_STORE_ROOT, PMG_S3_ENDPOINT_URL and the credentials: the workers need to write, read, "
           "list and delete objects there")  # fmt: skip
    try:
        store.put_bytes(key, payload)
        read = store.get_bytes(key)
        deleted = store.delete_prefix(key)
    except Exception as error:
        return Check("store", False, f"{store.root}: {type(error).__name__}: {error}", fix)
    if read != payload:
        return Check("store", False, f"{store.root}: a probe object read back different bytes", fix)
    if deleted != 1 or store.exists(key):
        return Check("store", False, f"{store.root}: the probe object {key} could not be deleted", fix)
    return Check("store", True, f"{store.root}: a probe object was written, read back and deleted")


def required_models(settings: Settings) -> list[str]:
    """The model roles tonight's settings load: diffusion and CLIP always, the LLM for a local LLM backend."""
    roles = ["diffusion", "clip"]
    if settings.keyword_backend in ("transformers", "vllm") or settings.models.llm:
        roles.append("llm")
    return roles


def check_models(settings: Settings) -> list[Check]:
    return [check_model(settings, role) for role in required_models(settings)]


def check_model(settings: Settings, role: str) -> Check:
    """The folder exists and holds a saved model whose configs and tokenizer load and whose weight files are
    whole (each safetensors file as long as its header says); weights are not loaded into memory."""
    from pmg_tasks.models.diffusion import require_model_dir

    name = f"models.{role}"
    fix = (f"set PMG_MODELS__{role.upper()} to a folder written by save_pretrained (or make test-size ones with "
           "`pmg models build-test-size --out DIR`)")  # fmt: skip
    try:
        directory = require_model_dir(getattr(settings.models, role), role)
    except (ValueError, FileNotFoundError) as error:
        return Check(name, False, str(error).split(": set PMG_")[0], fix)
    try:
        _load_configs(directory, role)
        weights = _check_weights(directory)
    except Exception as error:
        return Check(name, False, f"{directory} does not load: {type(error).__name__}: {error}"[:400],
                     f"save the model again into {directory}, or {fix[0].lower()}{fix[1:]}")  # fmt: skip
    return Check(name, True, f"{directory} loads ({weights} weight files whole)")


def _load_configs(directory: Path, role: str) -> None:
    if role == "diffusion":
        from diffusers import DiffusionPipeline
        from transformers import AutoConfig, AutoTokenizer

        DiffusionPipeline.load_config(str(directory))
        AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
        AutoConfig.from_pretrained(str(directory / "text_encoder"))
        return
    from transformers import AutoConfig, AutoTokenizer

    AutoConfig.from_pretrained(str(directory))
    AutoTokenizer.from_pretrained(str(directory))


def _check_weights(directory: Path) -> int:
    """How many weight files `directory` has; raises when a safetensors file is cut short or there is none."""
    files = sorted(p for p in directory.rglob("*") if p.suffix in {".safetensors", ".bin"})
    if not files:
        raise FileNotFoundError(f"no weight file (*.safetensors, *.bin) below {directory}")
    for path in files:
        if path.suffix != ".safetensors":
            continue
        with open(path, "rb") as weights:
            header_size = int.from_bytes(weights.read(8), "little")
            header = json.loads(weights.read(header_size))
        end = max((t["data_offsets"][1] for n, t in header.items() if n != "__metadata__"), default=0)
        if path.stat().st_size < 8 + header_size + end:
            raise ValueError(f"{path.name} is cut short ({path.stat().st_size} bytes, its header needs "
                             f"{8 + header_size + end})")  # fmt: skip
    return len(files)


def check_airflow(settings: Settings) -> list[Check]:
    """The pools the DAG's expensive tasks run in, and a worker for the GPU queue, as the Airflow that runs
    the DAG sees them (AIRFLOW_HOME when set, else pmg's own, the one `pmg run` uses)."""
    from pmg_tasks.airflow_run import airflow_env

    env = dict(os.environ) if os.environ.get("AIRFLOW_HOME") else airflow_env(settings)
    wanted = {settings.pools.gpu: settings.pools.gpu_slots, settings.pools.llm: settings.pools.llm_slots}
    probe = subprocess.run(
        [sys.executable, "-m", "pmg_tasks.doctor", "--airflow-probe", json.dumps(sorted(wanted))],
        env=env, capture_output=True, text=True, timeout=120,
    )
    lines = [line for line in probe.stdout.splitlines() if line.startswith("{")]
    if probe.returncode != 0 or not lines:
        errors = [line for line in probe.stderr.splitlines() if "Error" in line] or probe.stderr.splitlines()[-1:]
        reason = errors[-1].strip()[:300] if errors else f"exit {probe.returncode}"
        return [Check("airflow", False, f"Airflow's metadata database does not answer ({reason})",
                      "run `airflow db migrate` (pmg run does it for its own Airflow) with the same AIRFLOW_HOME "
                      "and [database] settings as the scheduler")]  # fmt: skip
    found = json.loads(lines[-1])
    checks = []
    for pool, slots in sorted(wanted.items()):
        have = found["pools"].get(pool)
        fix = f"airflow pools set {pool} {slots} 'pmg'"
        if have is None:
            checks.append(Check(f"pool {pool}", False, "does not exist: its tasks would never be scheduled", fix))
        elif have < 1:
            checks.append(Check(f"pool {pool}", False, f"has {have} slots: its tasks would never run", fix))
        else:
            checks.append(Check(f"pool {pool}", True, f"{have} slots"))
    queues = {settings.pools.default_queue, settings.placement("gpu").queue, settings.placement("llm").queue}
    checks.extend(_queue_check(settings, queue, found) for queue in sorted(queues))
    return checks


def _queue_check(settings: Settings, queue: str, found: dict) -> Check:
    executor, name = found["executor"], f"queue {queue}"
    if "Celery" not in executor:
        if queue == settings.pools.default_queue == "default":
            return Check(name, True, f"{executor} runs every task on this machine")
        return Check(name, False, f"{executor} ignores queues, yet tasks are sent to {queue!r}",
                     "set PMG_POOLS__GPU_QUEUE=default (and PMG_POOLS__DEFAULT_QUEUE=default) here, or run "
                     "Airflow with the CeleryExecutor (docs/scale-out.md)")  # fmt: skip
    consumers = found.get("queues", {})
    if queue not in consumers:
        return Check(name, False, "no Celery worker consumes it: its tasks would wait forever",
                     f"start a worker with `airflow celery worker --queues {queue}`")  # fmt: skip
    return Check(name, True, f"consumed by {', '.join(sorted(consumers[queue]))}")


def _airflow_probe(pools: list[str]) -> dict:
    """Inside the Airflow environment: the slots of `pools` and the executor (and, for Celery, who consumes
    which queue)."""
    from airflow.configuration import conf
    from airflow.models import Pool
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        found = {p.pool: p.slots for p in session.scalars(select(Pool).where(Pool.pool.in_(pools)))}
    executor = conf.get("core", "executor")
    queues: dict[str, list[str]] = {}
    if "Celery" in executor:
        from airflow.providers.celery.executors.celery_executor_utils import app

        for worker, active in (app.control.inspect(timeout=3).active_queues() or {}).items():
            for queue in active:
                queues.setdefault(queue["name"], []).append(worker)
    return {"pools": found, "executor": executor, "queues": queues}


def check_campaigns(settings: Settings) -> Check:
    """The campaigns folder (or file) exists and every campaign in it validates; a broken one would be
    skipped tonight, so it fails here with the first problem's own fix."""
    from pmg_tasks.campaigns import read_campaigns

    found = read_campaigns(settings.campaigns_file, settings.campaign_limits)
    if found.problems:
        first = found.problems[0]
        more = f" (and {len(found.problems) - 1} more: `pmg campaigns validate`)" if len(found.problems) > 1 else ""
        where = f"{first.field}: " if first.field else ""
        return Check("campaigns", False, f"{first.file}: {where}{first.message}{more}", first.fix)
    return Check("campaigns", True, f"{settings.campaigns_file}: {len(found.campaigns)} campaigns")


def check_gpu() -> Check:
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return Check("gpu extra", True, "no GPU on this machine: nothing to check", skipped=True)
    missing = [name for name in ("vllm", "open_clip", "torchvision") if importlib.util.find_spec(name) is None]
    device = torch.cuda.get_device_name(0)
    if missing:
        return Check("gpu extra", False, f"{device} present, but {', '.join(missing)} not installed",
                     "pip install -r requirements.txt -r requirements-gpu.txt -c constraints.txt")  # fmt: skip
    return Check("gpu extra", True, f"{device}; vllm, open_clip and torchvision installed")


def doctor(settings: Settings) -> int:
    """Print one line per check; 1 when any failed."""
    checks = run_checks(settings)
    for check in checks:
        print(check.line())
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} of {len(checks)} checks passed" + (f"; {len(failed)} failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__" and sys.argv[1:2] == ["--airflow-probe"]:
    print(json.dumps(_airflow_probe(json.loads(sys.argv[2]))))
