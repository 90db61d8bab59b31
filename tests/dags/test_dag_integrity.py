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
    assert {"pmg_nightly", "pmg_campaign_run"} <= set(dagbag.dags)


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
        assert task.retries == Settings().pools.task_retries >= 1, f"{task.task_id} has no retries"
        assert task.execution_timeout is not None, f"{task.task_id} has no execution timeout"


def test_wiring_follows_the_nightly_flow(nightly):
    upstream = {t.task_id: set(t.upstream_task_ids) - {"run_date"} for t in nightly.tasks}
    assert upstream == {
        "run_date": set(),
        "campaigns": set(),
        "extract": {"campaigns"},
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


def test_publish_links_to_the_run_report(dagbag):
    for dag_id in ("pmg_nightly", "pmg_campaign_run"):
        links = dagbag.dags[dag_id].get_task("publish").operator_extra_links
        assert [link.name for link in links] == ["Run report"]
    from pmg_tasks.dag_parts import report_url

    assert report_url("2026-11-20", "winter").endswith("/pmg/store/reports/ds=2026-11-20/index.html#campaign-winter")
