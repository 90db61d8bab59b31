"""pmg_nightly through Airflow on S3 as production reaches it: a real S3 API server on loopback (moto in
server mode), the store root s3://bucket/prefix, the server named only by the Airflow connection's
`endpoint_url` extra. Once directly, once through a proxy that fails requests and drops connections."""

from __future__ import annotations

import io
import json
import re
import uuid

import pandas as pd
import pytest

from pmg_tasks.airflow_run import run_nightly_dag
from pmg_tasks.layout import success_key
from pmg_tasks.store import open_store, read_frame, read_json
from tests.fault_proxy import FaultProxy
from tests.pipeline import run_stages_until

pytestmark = [pytest.mark.night, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


def aws_connection(endpoint: str) -> dict[str, str]:
    """The Airflow connection `aws_default`, defined the way a deployment would (here: in the environment)."""
    extra = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    return {"AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra})}


def published(store, ds: str) -> dict:
    """What a consumer sees of a date: the creatives by key and bytes, the manifest rows (less the
    store-specific image_uri), the marker."""
    keys = [k for k in store.list_keys(f"manifests/ds={ds}/") if k.endswith("manifest.parquet")]
    manifest = pd.concat([read_frame(store, k) for k in keys], ignore_index=True).drop(columns=["image_uri"])
    creatives = {k: store.get_bytes(k) for k in store.list_keys(f"creatives/ds={ds}/")}
    return {"keys": keys, "manifest": manifest, "creatives": creatives, "success": read_json(store, success_key(ds))}


def assert_same(got: dict, want: dict) -> None:
    assert got["keys"] == want["keys"]
    pd.testing.assert_frame_equal(got["manifest"], want["manifest"])
    assert got["manifest"].duplicated(["campaign_id", "user_id", "item_id", "rank"]).sum() == 0
    assert sorted(got["creatives"]) == sorted(want["creatives"]) == sorted(set(want["manifest"]["image_key"]))
    assert got["creatives"] == want["creatives"]
    assert got["success"] == want["success"]


def test_nightly_dag_on_s3_equals_a_local_run_and_rides_out_a_faulty_network(
    seeded_settings, test_size_models, run_date, s3_server
):
    import boto3
    from PIL import Image

    retries = seeded_settings.retries.model_copy(update={"per_task": 0})  # botocore must do the retrying
    base = seeded_settings.model_copy(update={"models": test_size_models, "retries": retries})
    bucket = f"pmg-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)

    def on_s3(prefix: str):
        return base.model_copy(update={"store_root": f"s3://{bucket}/{prefix}", "s3_endpoint_url": ""})

    def reader(settings):
        # The test reads directly (plain settings), never through the proxy.
        return open_store(settings.model_copy(update={"s3_endpoint_url": s3_server}))

    run = run_nightly_dag(on_s3("prod"), run_date, extra_env=aws_connection(s3_server), log_name="s3")
    # The Asset event tells consumers the date, where the manifests are, and how much they hold.
    [event] = run.asset_events
    assert event["ds"] == run_date and event["complete"] is True and event["missing_shards"] == []
    assert all(uri.startswith(f"s3://{bucket}/prod/manifests/ds={run_date}/") for uri in event["manifests"].values())
    local = base.model_copy(update={"store_root": str(base.home / "local-store")})
    run_stages_until(local, run_date, "publish")
    want = published(open_store(local), run_date)
    assert len(want["manifest"]) > 0
    got = published(reader(on_s3("prod")), run_date)
    assert_same(got, want)
    assert event["rows"] == len(want["manifest"]) and sorted(event["manifests"]) == event["campaigns"]
    # The reader, on S3 as on a folder.
    from pmg_tasks.consumers import load_manifest

    read = load_manifest(run_date, settings=on_s3("prod").model_copy(update={"s3_endpoint_url": s3_server}))
    assert len(read) == len(want["manifest"]) and read.attrs["complete"] is True
    Image.open(io.BytesIO(next(iter(got["creatives"].values())))).load()
    assert all(uri.startswith(f"s3://{bucket}/prod/creatives/") for uri in read_frame(
        reader(on_s3("prod")), got["keys"][0])["image_uri"])  # fmt: skip

    with FaultProxy(s3_server, error_rate=0.04, drop_rate=0.02, seed=11) as proxy:
        run = run_nightly_dag(on_s3("faulty"), run_date, extra_env=aws_connection(proxy.url), log_name="faults")
    assert proxy.counts["error"] > 0 and proxy.counts["drop"] > 0
    retried = [int(n) for n in re.findall(r"(\d+) retried attempts", run.log_file.read_text(errors="replace"))]
    assert retried and sum(retried) > 0
    assert_same(published(reader(on_s3("faulty")), run_date), want)
