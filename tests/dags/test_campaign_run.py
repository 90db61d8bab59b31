"""pmg_campaign_run through Airflow (`airflow dags test` with the trigger form's values as the run's conf)."""

from __future__ import annotations

import pytest
import yaml

from pmg_tasks.airflow_run import run_nightly_dag
from pmg_tasks.layout import manifest_key, run_key
from pmg_tasks.store import open_store, read_frame, read_json

pytestmark = [pytest.mark.night, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


def test_the_form_runs_one_campaign_with_its_changes_and_a_dry_run_draws_nothing(
    seeded_settings, test_size_models, run_date
):
    retries = seeded_settings.retries.model_copy(update={"per_task": 0})
    settings = seeded_settings.model_copy(update={"models": test_size_models, "retries": retries})
    store = open_store(settings)

    dry = {"campaign_id": "winter-classics", "ds": run_date, "dry_run": True}
    run = run_nightly_dag(settings, run_date, dag_id="pmg_campaign_run", conf=dry)
    assert run.task_states.get("skipped", 0) >= 3  # headlines, generate, publish
    plan = read_json(store, run_key(run_date, "stats/plan.json"))
    assert plan["campaigns"] == ["winter-classics"] and plan["generations"] > 0
    assert not store.list_keys(f"manifests/ds={run_date}/")

    form = {"campaign_id": "sci-fi-weekend", "ds": run_date, "variants": 3, "alpha": 0.9, "dry_run": False}
    run_nightly_dag(settings, run_date, dag_id="pmg_campaign_run", conf=form)
    manifest = read_frame(store, manifest_key(run_date, "sci-fi-weekend"))
    assert set(manifest["rank"]) == {1, 2, 3} and set(manifest["alpha"]) == {0.9}
    assert not store.exists(manifest_key(run_date, "winter-classics"))
    # The run's copy of its campaign carries the form's changes; the folder's file does not.
    copy = yaml.safe_load(store.get_bytes(run_key(run_date, "campaigns/files/sci-fi-weekend.yaml")))
    assert (copy["variants"], copy["alpha"], copy["candidates"]) == (3, 0.9, 3)
    index = read_json(store, run_key(run_date, "campaigns/index.json"))
    assert index["files"] == ["sci-fi-weekend.yaml"]


def test_the_form_offers_the_valid_campaigns_and_bounds_alpha(seeded_settings, monkeypatch):
    import runpy

    from pmg_tasks.airflow_run import DAGS_FOLDER

    (seeded_settings.home / "campaigns" / "broken.yaml").write_text("variants: many\n")
    monkeypatch.setenv("PMG_CAMPAIGNS_FILE", str(seeded_settings.home / "campaigns"))
    dag = runpy.run_path(str(DAGS_FOLDER / "pmg_campaign_run.py"))["pmg_campaign_run"]()
    schema = {name: param.schema for name, param in dag.params.items()}
    assert schema["campaign_id"]["enum"] == ["sci-fi-weekend", "winter-classics"]
    assert (schema["alpha"]["minimum"], schema["alpha"]["maximum"]) == (0.0, 1.0)
    assert schema["dry_run"]["type"] == "boolean"
    # The form refuses an alpha out of bounds before anything runs.
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="1.5 is greater than the maximum"):
        dag.params["alpha"] = 1.5
