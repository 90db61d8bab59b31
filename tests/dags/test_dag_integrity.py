"""The DAG file parses cleanly and cheaply, and its wiring is what DESIGN.md draws."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pmg_tasks.airflow_run import DAGS_FOLDER
from pmg_tasks.settings import Settings

HEAVY_LIBRARIES = ("torch", "diffusers", "transformers", "great_expectations", "torch_geometric", "pandas",
                   "duckdb", "pyarrow", "boto3")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


@pytest.fixture(scope="module")
def nightly(dagbag):
    return dagbag.dags["pmg_nightly"]


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "pmg_nightly" in dagbag.dags


def test_parsing_imports_no_heavy_library():
    """Parse cost is bounded by what parsing imports: Airflow and pydantic, none of the heavy libraries."""
    probe = (
        "import sys, runpy; runpy.run_path(sys.argv[1]); "
        f"print(','.join(m for m in {HEAVY_LIBRARIES!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(DAGS_FOLDER / "pmg_nightly.py")],
        capture_output=True, text=True, check=True,
    )
    assert result.stdout.strip().splitlines()[-1:] in ([], [""]), f"heavy imports at parse time: {result.stdout}"


def test_every_task_retries_and_the_dag_is_tagged(nightly):
    assert nightly.tags and "pmg" in nightly.tags
    for task in nightly.tasks:
        assert task.retries == Settings().retries.per_task >= 1, f"{task.task_id} has no retries"
        assert task.execution_timeout is not None, f"{task.task_id} has no execution timeout"


def test_wiring_follows_the_nightly_flow(nightly):
    upstream = {t.task_id: set(t.upstream_task_ids) - {"run_date"} for t in nightly.tasks}
    assert upstream == {
        "run_date": set(),
        "extract": set(),
        "validate": {"extract"},
        "histories": {"validate"},
        "keyword_shards": {"histories"},
        "keywords": {"keyword_shards"},
        "merge_keywords": {"keywords"},
        "preference_tokens": {"merge_keywords"},
        "token_embeddings": {"preference_tokens"},
        "plan": {"preference_tokens"},
        "headlines": {"plan"},
        "generate": {"plan", "headlines", "token_embeddings"},
        "publish": {"generate"},
    }


def test_expensive_stages_run_in_their_pools_and_generation_fans_out(nightly):
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    settings = Settings()
    generate = nightly.get_task("generate")
    assert isinstance(generate, MappedOperator)
    assert generate.pool == settings.pools.gpu
    keywords = nightly.get_task("keywords")
    assert isinstance(keywords, MappedOperator)
    assert keywords.pool == settings.pools.llm
    # Token training runs the diffusion model: a GPU task; headlines run the keyword backend's LLM.
    embeddings = nightly.get_task("token_embeddings")
    assert (embeddings.pool, embeddings.queue) == (settings.pools.gpu, settings.pools.gpu_queue)
    assert generate.queue == settings.pools.gpu_queue
    assert nightly.get_task("headlines").pool == settings.pools.llm


def test_publish_emits_the_manifest_asset(nightly):
    outlets = nightly.get_task("publish").outlets
    assert [a.name for a in outlets] == ["pmg_creative_manifests"]


def test_gpu_tasks_are_capped_by_the_same_slots_the_pools_are_set_with(nightly):
    from pmg_tasks.airflow_run import pool_specs

    settings = Settings()
    slots = {name: count for name, count, _ in pool_specs(settings)}
    for task_id in ("token_embeddings", "generate"):
        task = nightly.get_task(task_id)
        assert task.max_active_tis_per_dag == slots[task.pool] == settings.pools.gpu_slots
    for task_id in ("keywords", "headlines"):
        task = nightly.get_task(task_id)
        assert task.max_active_tis_per_dag == slots[task.pool] == settings.pools.llm_slots


@pytest.mark.parametrize(
    ("backend", "on_gpu"), [("catalog", False), ("openai", False), ("transformers", True), ("vllm", True)]
)
def test_llm_tasks_go_to_the_gpu_queue_when_their_backend_loads_a_model(monkeypatch, backend, on_gpu):
    """A cluster's keyword and headline tasks follow the model: onto a GPU worker, in the GPU pool, when the
    backend loads one into the task; on any worker, in the LLM pool, when there is none or it is served."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("PMG_KEYWORD_BACKEND", backend)
    monkeypatch.setenv("PMG_POOLS__GPU_QUEUE", "gpu")
    monkeypatch.setenv("PMG_POOLS__GPU_SLOTS", "3")
    monkeypatch.setenv("PMG_POOLS__LLM_SLOTS", "2")
    dag = DagBag(dag_folder=str(DAGS_FOLDER)).dags["pmg_nightly"]
    expected = ("pmg_gpu", "gpu", 3) if on_gpu else ("pmg_llm", "default", 2)
    for task_id in ("keywords", "headlines"):
        task = dag.get_task(task_id)
        assert (task.pool, task.queue, task.max_active_tis_per_dag) == expected, task_id
    # Diffusion always runs on the GPU queue; everything else stays on the default one.
    gpu_tasks = {"token_embeddings", "generate"} | ({"keywords", "headlines"} if on_gpu else set())
    assert {t.task_id for t in dag.tasks if t.queue == "gpu"} == gpu_tasks
