"""docker/compose.yaml and the Dockerfiles, read as files (no Docker engine here): the services of Airflow's
distributed setup, the queues the DAG routes to, the mounts the tasks read, settings the settings object
knows, pools sized from the same numbers, and no secret in any tracked file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pmg_tasks.settings import Settings

DOCKER = Path(__file__).resolve().parents[1] / "docker"
AIRFLOW_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker", "airflow-worker-gpu"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|ACCESS_KEY", re.IGNORECASE)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    return dict(env) if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def resolved(value: str, variables: dict[str, str] | None = None) -> str:
    """A compose value with ${NAME:-default} / ${NAME:?error} filled from `variables`, else its default."""
    variables = variables or {}

    def fill(match: re.Match) -> str:
        name, op, rest = match.group(1), match.group(2) or "", match.group(3) or ""
        return variables.get(name, rest if op == ":-" else "")

    return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", fill, str(value))


def queues_of(service: dict) -> list[str]:
    words = service["command"].split()
    return words[words.index("--queues") + 1].split(",")


def test_the_services_of_airflows_distributed_setup(compose):
    services = compose["services"]
    assert set(services) == AIRFLOW_SERVICES | {"postgres", "redis", "minio"}
    for name, service in services.items():
        if name != "airflow-init":
            assert "healthcheck" in service, f"{name} has no healthcheck"
    for name in AIRFLOW_SERVICES:
        env = environment(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
        assert "postgres" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert env["PMG_S3_ENDPOINT_URL"] == "http://minio:9000"
    init = services["airflow-init"]["command"][-1]
    assert "airflow db migrate" in init and "pmg pools" in init


def test_workers_listen_on_the_queues_the_dag_routes_to(compose):
    services = compose["services"]
    env = environment(services["airflow-worker"])
    settings = Settings(pools={"gpu_queue": env["PMG_POOLS__GPU_QUEUE"],
                               "default_queue": env["PMG_POOLS__DEFAULT_QUEUE"]})
    # The CPU worker takes the default queue, which is where model-free LLM tasks go too.
    assert queues_of(services["airflow-worker"]) == [settings.pools.default_queue]
    assert settings.placement("llm").queue == settings.pools.default_queue
    assert env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == settings.pools.default_queue
    gpu = services["airflow-worker-gpu"]
    assert queues_of(gpu) == [settings.placement("gpu").queue] == ["gpu"]
    assert gpu["image"] == "pmg:gpu" and gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # One task per GPU on each worker, and as many GPU pool slots as GPU workers, for any GPU_WORKERS.
    assert gpu["command"].split()[gpu["command"].split().index("--concurrency") + 1] == "1"
    for workers in ("1", "8"):
        replicas = resolved(gpu["deploy"]["replicas"], {"GPU_WORKERS": workers})
        slots = resolved(environment(gpu)["PMG_POOLS__GPU_SLOTS"], {"GPU_WORKERS": workers})
        assert replicas == slots == workers
    assert "gpu" not in queues_of(services["airflow-worker"])


def test_tasks_see_the_models_the_campaigns_and_shared_logs(compose):
    for name in AIRFLOW_SERVICES:
        service = compose["services"][name]
        targets = {resolved(volume).split(":")[1]: volume for volume in service["volumes"]}
        env = environment(service)
        models = targets["/models"]
        assert models.endswith(":ro")
        for role in ("DIFFUSION", "CLIP", "LLM"):
            assert env[f"PMG_MODELS__{role}"].startswith("/models/")
        assert Path(env["PMG_CAMPAIGNS_FILE"]).parent.as_posix() in targets
        assert "/opt/airflow/logs" in targets, f"{name}: task logs must be shared with the api-server"


def _field_known(model: type[BaseModel], path: list[str]) -> bool:
    fields = {name.upper(): info for name, info in model.model_fields.items()}
    info = fields.get(path[0])
    if info is None:
        return False
    if len(path) == 1:
        return True
    annotation = info.annotation
    return isinstance(annotation, type) and issubclass(annotation, BaseModel) and _field_known(annotation, path[1:])


def test_every_pmg_variable_is_a_setting_and_parses(compose):
    for name, service in compose["services"].items():
        env = {k: v for k, v in environment(service).items() if k.startswith("PMG_")}
        for variable in env:
            assert _field_known(Settings, variable.removeprefix("PMG_").split("__")), (
                f"{name} sets {variable}, which pmg_tasks/settings.py does not know"
            )
        if env:  # and the values, with compose's defaults, are valid settings
            Settings(**_nested({k.removeprefix("PMG_"): resolved(v) for k, v in env.items()}))


def _nested(flat: dict[str, str]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        *groups, leaf = key.lower().split("__")
        node = tree
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = value
    return tree


def test_no_secret_in_a_tracked_file(compose):
    """Every password, key and secret the compose file passes is read from the environment."""
    for name, service in compose["services"].items():
        for variable, value in environment(service).items():
            if SECRET_NAME.search(variable):
                assert str(value).startswith("${"), f"{name}: {variable} is written in the file"
            for scheme_secret in re.findall(r"://[^:/@]+:([^@]+)@", str(value)):
                assert scheme_secret.startswith("${"), f"{name}: {variable} has a password in its URL"
    example = dict(
        line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    referenced = set(re.findall(r"\$\{(\w+):\?", (DOCKER / "compose.yaml").read_text()))
    assert referenced <= set(example), f".env.example lacks {referenced - set(example)}"
    assert all(example[name] == "" for name in referenced), ".env.example must not carry secret values"
    assert "docker/.env" in (DOCKER.parent / ".gitignore").read_text().split()


@pytest.mark.parametrize(("dockerfile", "extra"), [("Dockerfile", False), ("Dockerfile.gpu", True)])
def test_images_install_the_requirement_files_the_tests_use(dockerfile, extra):
    text = (DOCKER / dockerfile).read_text()
    installs = " ".join(line for line in text.replace("\\\n", " ").splitlines() if line.startswith("RUN"))
    assert "-r requirements.txt" in installs and "-c constraints.txt" in installs
    assert ("-r requirements-gpu.txt" in installs) is extra
    assert "torch==2.13.0" in installs
    base = next(line.split()[1] for line in text.splitlines() if line.startswith("FROM"))
    if extra:
        default = re.search(r"ARG CUDA_BASE=(\S+)", text).group(1)
        assert base == "${CUDA_BASE}" and default.startswith("nvidia/cuda:") and "runtime" in default
    else:
        assert base.startswith("python:3.11")
