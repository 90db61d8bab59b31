"""pmg_nightly run for real through Airflow (`airflow dags test`) on a seeded embedded warehouse."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pmg_tasks.airflow_run import run_nightly_dag
from pmg_tasks.layout import report_key, run_key, success_key
from pmg_tasks.store import open_store, read_frame, read_json, read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


def manifest_of(store, ds: str) -> pd.DataFrame:
    keys = [k for k in store.list_keys(f"manifests/ds={ds}/") if k.endswith("manifest.parquet")]
    return pd.concat([read_frame(store, k) for k in keys], ignore_index=True)


def test_nightly_dag_end_to_end_and_idempotent_rerun(seeded_settings, test_size_models, run_date):
    # No retries: a broken stage should fail this test in seconds, not after minutes of backoff.
    retries = seeded_settings.retries.model_copy(update={"per_task": 0})
    settings = seeded_settings.model_copy(update={"models": test_size_models, "retries": retries})
    store = open_store(settings)

    run_nightly_dag(settings, run_date)

    # Nothing lost at the door: every extracted event is valid or quarantined with a reason.
    extracted = read_table(store, run_key(run_date, "events.parquet")).num_rows
    valid = read_table(store, run_key(run_date, "events_valid.parquet")).num_rows
    quarantine = read_frame(store, run_key(run_date, "quarantine.parquet"))
    assert extracted > 0 and extracted == valid + len(quarantine)
    assert quarantine["reason"].str.len().gt(0).all()
    assert read_json(store, run_key(run_date, "validation.json"))["extracted"] == extracted

    # One manifest row per planned creative, each pointing at an image that exists and opens; a segment's
    # users share generations, and each creative is stored once.
    requests = read_frame(store, run_key(run_date, "requests.parquet"))
    plan = read_json(store, run_key(run_date, "stats/plan.json"))
    manifest = manifest_of(store, run_date)
    assert len(requests) > 0
    assert len(manifest) == int(requests["variants"].sum()) == plan["requested_creatives"]
    assert set(manifest["campaign_id"]) == set(requests["campaign_id"])
    assert plan["generations"] == requests["signature"].nunique() < len(requests)
    # The image view ran on the demo's item pictures, and every token in use got a learned row.
    assert read_json(store, run_key(run_date, "preference_graph.json"))["items_with_image"] > 0
    embeddings = read_json(store, run_key(run_date, "stats/token_embeddings.json"))
    assert embeddings["trained_tokens"] == embeddings["tokens"] > 0
    assert manifest["headline"].str.len().gt(0).all()
    size = settings.generation.image_size
    for key in manifest["image_key"].unique():
        image = Image.open(io.BytesIO(store.get_bytes(key)))
        image.load()
        assert image.size == (size, size)
    assert np.isfinite(manifest[["d_p", "d_t", "consistency", "z"]].to_numpy()).all()
    alpha = manifest["alpha"]
    assert np.allclose(manifest["z"], alpha * np.log(manifest["d_p"]) + (1 - alpha) * np.log(manifest["d_t"]))

    assert store.exists(success_key(run_date))
    report = store.get_bytes(report_key(run_date)).decode()
    for campaign_id in manifest["campaign_id"].unique():
        assert f"Campaign {campaign_id}" in report

    # The same date again: same names, same rows, no duplicates, and no image drawn or written again.
    written = {key: store.path(key).stat().st_mtime_ns for key in manifest["image_key"].unique()}
    run_nightly_dag(settings, run_date)
    assert {key: store.path(key).stat().st_mtime_ns for key in written} == written
    again = manifest_of(store, run_date)
    pd.testing.assert_frame_equal(
        manifest.drop(columns=["image_uri"]), again.drop(columns=["image_uri"]), check_like=True
    )
    creatives = [k for k in store.list_keys(f"creatives/ds={run_date}/") if k.endswith(".png")]
    assert len(creatives) == manifest["creative_id"].nunique() < len(manifest)
    # The rerun trained no token rows again and drew nothing again.
    assert not read_json(store, run_key(run_date, "stats/token_embeddings.json"))["trained_now"]
