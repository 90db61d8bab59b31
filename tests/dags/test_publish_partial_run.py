"""A generate shard that fails inside a real Airflow run (`airflow dags test`): with the DAG param
publish_partial off the night publishes nothing and names the shard; on, it publishes what the other shards
made, and `_SUCCESS`, the manifests and the Asset event say which requests are missing.

The shard is made to fail the way a worker's disk can: a directory stands where its result table goes, so
it draws and records its creatives and then cannot write the result. Nothing in pmg knows about the test.
"""

from __future__ import annotations

import pytest

from pmg_tasks.airflow_run import NightlyRunError, run_nightly_dag
from pmg_tasks.consumers import load_manifest
from pmg_tasks.layout import run_key, shard_key, shard_result_key, success_key
from pmg_tasks.store import open_store, read_frame, read_json
from tests.dags.test_nightly_run import manifest_of as manifests

pytestmark = [pytest.mark.night, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

BROKEN = 1  # the shard whose task fails


def test_a_shard_failing_in_a_real_run_stops_publishing_or_publishes_the_rest_naming_what_is_missing(
    seeded_settings, test_size_models, run_date
):
    retries = seeded_settings.retries.model_copy(update={"per_task": 0})  # the failure must stay a failure
    # Small shards, so the demo night has several and one can fail while the others succeed.
    generation = seeded_settings.generation.model_copy(update={"requests_per_shard": 4})
    settings = seeded_settings.model_copy(update={"models": test_size_models, "retries": retries, "generation": generation})
    store = open_store(settings)
    (store.path(shard_result_key(run_date, BROKEN))).mkdir(parents=True)

    # publish_partial off (the default): the night fails, publish names the shard, no _SUCCESS.
    with pytest.raises(NightlyRunError) as refused:
        run_nightly_dag(settings, run_date, log_name="strict")
    states = refused.value.run.task_states
    assert states.get("failed") == 2, states  # the broken shard, and publish refusing to go on without it
    log = refused.value.run.log_file.read_text(errors="replace")
    assert f"generate shards [{BROKEN}] of" in log and "publish_partial" in log
    assert not store.exists(success_key(run_date))
    plan = read_json(store, run_key(run_date, "stats/plan.json"))
    assert plan["shards"] > BROKEN + 1

    # publish_partial on: the same failure, and what the other shards made is published, the gap named.
    with pytest.raises(NightlyRunError) as partial:
        run_nightly_dag(settings, run_date, conf={"publish_partial": True}, log_name="partial")
    run = partial.value.run
    assert run.task_states.get("failed") == 1, run.task_states  # only the shard
    marker = read_json(store, success_key(run_date))
    lost = set(read_frame(store, shard_key(run_date, BROKEN))["signature"])
    requests = read_frame(store, run_key(run_date, "requests.parquet"))
    missing = requests[requests["signature"].isin(lost)]
    assert marker["complete"] is False and marker["missing_shards"] == [BROKEN]
    missing_records = missing[["campaign_id", "user_id", "item_id"]].astype(str).sort_values(["campaign_id", "user_id", "item_id"])
    assert marker["missing_requests"] == missing_records.to_dict("records") != []

    published = manifests(store, run_date)
    assert not published["signature"].isin(lost).any()
    assert len(published) == int(requests.loc[~requests["signature"].isin(lost), "variants"].sum()) > 0
    assert all(store.exists(key) for key in published["image_key"])
    assert published.duplicated(["campaign_id", "user_id", "item_id", "rank"]).sum() == 0

    # Consumers learn it from the Asset event and from the reader.
    (event,) = run.asset_events
    assert event["complete"] is False and event["missing_shards"] == [BROKEN]
    assert event["missing_requests"] == len(missing) and event["rows"] == len(published)
    read = load_manifest(run_date, settings=settings)
    assert read.attrs["complete"] is False and len(read) == len(published)

    # The disk mended, a rerun of the date completes it: every request has its rows, nothing twice.
    store.path(shard_result_key(run_date, BROKEN)).rmdir()
    run_nightly_dag(settings, run_date, log_name="mended")
    marker = read_json(store, success_key(run_date))
    assert marker["complete"] is True and marker["missing_requests"] == []
    complete = manifests(store, run_date)
    assert len(complete) == int(requests["variants"].sum()) == plan["requested_creatives"]
    assert complete.duplicated(["campaign_id", "user_id", "item_id", "rank"]).sum() == 0
    creatives = store.list_keys(f"creatives/ds={run_date}/")
    assert sorted(creatives) == sorted(set(complete["image_key"]))
