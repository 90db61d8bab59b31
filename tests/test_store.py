"""The object store, local and S3 (a real S3 API server on loopback), behind one interface."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from PIL import Image

from pmg_tasks.settings import Settings
from pmg_tasks.store import LocalStore, S3Store, image_bytes, open_store, read_frame, write_table


def exercise(store) -> None:
    """The same contract, whichever backend."""
    store.put_bytes("runs/ds=2026-11-20/a.txt", b"alpha")
    store.put_bytes("runs/ds=2026-11-20/sub/b.txt", b"beta")
    store.put_bytes("runs/ds=2026-11-21/c.txt", b"gamma")
    assert store.get_bytes("runs/ds=2026-11-20/a.txt") == b"alpha"
    assert store.exists("runs/ds=2026-11-20/a.txt")
    assert not store.exists("runs/ds=2026-11-20/missing.txt")
    assert store.list_keys("runs/ds=2026-11-20/") == ["runs/ds=2026-11-20/a.txt", "runs/ds=2026-11-20/sub/b.txt"]
    with pytest.raises(KeyError, match="missing.txt"):
        store.get_bytes("runs/ds=2026-11-20/missing.txt")

    frame = pd.DataFrame({"user_id": ["u1", "u2"], "keywords": [["noir", "retro"], []], "z": [0.5, -1.25]})
    write_table(store, "runs/ds=2026-11-20/t.parquet", frame)
    back = read_frame(store, "runs/ds=2026-11-20/t.parquet")
    assert back["user_id"].tolist() == ["u1", "u2"]
    assert [list(k) for k in back["keywords"]] == [["noir", "retro"], []]

    image = Image.new("RGB", (8, 8), (200, 10, 10))
    image.info["z"] = "-0.25"
    store.put_bytes("creatives/x.png", image_bytes(image))
    reopened = Image.open(io.BytesIO(store.get_bytes("creatives/x.png")))
    assert reopened.size == (8, 8) and reopened.text["z"] == "-0.25"

    assert store.delete_prefix("runs/ds=2026-11-20/") == 3
    assert store.list_keys("runs/ds=2026-11-20/") == []
    assert store.list_keys("runs/ds=2026-11-21/") == ["runs/ds=2026-11-21/c.txt"]


def test_local_store_contract(tmp_path):
    exercise(LocalStore(tmp_path / "store"))


def test_local_store_rejects_keys_that_escape_the_root(tmp_path):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ValueError, match="escapes the store root"):
        store.put_bytes("../outside.txt", b"x")


def test_local_write_is_atomic_when_the_writer_fails(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put_bytes("k.txt", b"old")
    with pytest.raises(RuntimeError), store.writing("k.txt") as path:
        path.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert store.get_bytes("k.txt") == b"old"
    assert store.list_keys("") == ["k.txt"]  # no temp file left behind


@pytest.mark.integration
def test_s3_store_contract_against_a_real_s3_api_server(s3_server):
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="pmg-test")
    settings = Settings(store_root="s3://pmg-test/prod", s3_endpoint_url=s3_server)
    store = open_store(settings)
    assert isinstance(store, S3Store)
    exercise(store)
    assert store.url("a/b.png") == "s3://pmg-test/prod/a/b.png"


def test_open_store_defaults_to_a_local_folder_in_home(tmp_path):
    store = open_store(Settings(home=tmp_path))
    assert isinstance(store, LocalStore) and store.root == str(tmp_path / "store")


def test_local_objects_are_published_readable_by_group_and_others(tmp_path):
    import stat

    store = LocalStore(tmp_path / "store")
    store.put_bytes("reports/ds=2026-11-20/index.html", b"<html></html>")
    write_table(store, "manifests/ds=2026-11-20/campaign=c/manifest.parquet", pd.DataFrame({"a": [1]}))
    with store.writing("creatives/ds=2026-11-20/a.png") as path:
        path.unlink()  # a writer that recreates the file (DuckDB's COPY does) still publishes 0644
        path.write_bytes(b"png")
    for key in store.list_keys(""):
        assert stat.S_IMODE(store.path(key).stat().st_mode) == 0o644, key


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on the loopback S3 server."""
    import uuid

    import boto3

    name = f"pmg-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.mark.integration
def test_s3_through_the_airflow_connection_and_its_endpoint_url_extra(s3_server, s3_bucket, monkeypatch):
    import json

    from pmg_tasks.s3_client import s3_client
    from pmg_tasks.settings import S3

    connection = {"conn_type": "aws", "login": "testing", "password": "testing",
                  "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_PMG_TEST_S3", json.dumps(connection))
    # No endpoint in the plain settings: only the connection knows where the server is.
    settings = Settings(store_root=f"s3://{s3_bucket}/prod", s3=S3(conn_id="pmg_test_s3"))
    client, source = s3_client(settings)
    assert source == "Airflow connection 'pmg_test_s3'" and client.meta.endpoint_url == s3_server
    assert client.meta.config.retries["mode"] == "adaptive"
    store = open_store(settings)
    exercise(store)
    assert store.transfer_stats()["requests"] > 0

    with pytest.raises(ValueError, match="connection 'not_there' .* does not define it"):
        s3_client(Settings(store_root=f"s3://{s3_bucket}/prod", s3=S3(conn_id="not_there")))


@pytest.mark.integration
def test_s3_objects_carry_content_types_cache_headers_and_large_ones_go_in_parts(s3_server, s3_bucket):
    from pmg_tasks.settings import S3

    store = open_store(Settings(store_root=f"s3://{s3_bucket}/p", s3_endpoint_url=s3_server, s3=S3(multipart_threshold_mb=5, multipart_chunk_mb=5)))
    store.put_bytes("creatives/ds=2026-11-20/campaign=c/abc.png", b"\x89PNG")
    write_table(store, "manifests/ds=2026-11-20/campaign=c/manifest.parquet", pd.DataFrame({"a": [1]}))
    store.put_bytes("manifests/ds=2026-11-20/_SUCCESS", b"{}")
    large = bytes(range(256)) * (11 * 4096)  # 11 MiB: three parts of 5 MiB at most
    store.put_bytes("runs/ds=2026-11-20/large.bin", large)

    def head(key):
        return store.client.head_object(Bucket=s3_bucket, Key=f"p/{key}")

    png = head("creatives/ds=2026-11-20/campaign=c/abc.png")
    assert png["ContentType"] == "image/png" and "immutable" in png["CacheControl"]
    manifest = head("manifests/ds=2026-11-20/campaign=c/manifest.parquet")
    assert manifest["ContentType"] == "application/vnd.apache.parquet" and manifest["CacheControl"] == "no-cache"
    assert head("manifests/ds=2026-11-20/_SUCCESS")["ContentType"] == "application/json"
    assert head("runs/ds=2026-11-20/large.bin")["ETag"].strip('"').endswith("-3")  # a multipart upload's ETag
    assert store.get_bytes("runs/ds=2026-11-20/large.bin") == large


@pytest.mark.integration
def test_s3_put_many_uploads_everything(s3_server, s3_bucket):
    store = open_store(Settings(store_root=f"s3://{s3_bucket}/many", s3_endpoint_url=s3_server))
    items = [(f"creatives/ds=2026-11-20/campaign=c/{i:04d}.png", f"png {i}".encode()) for i in range(200)]
    assert store.put_many(iter(items)) == 200
    assert store.list_keys("creatives/") == [key for key, _ in items]
    assert store.get_bytes(items[123][0]) == b"png 123"


def test_put_many_runs_a_bounded_pool_and_raises_the_first_failure():
    import threading
    import time

    from pmg_tasks.store import put_many_with_pool

    lock, running, peak, seen = threading.Lock(), [0], [0], []

    def put(key, data):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
            seen.append(key)
        if key == "bad":
            raise OSError("disk full")

    assert put_many_with_pool(put, ((f"k{i}", b"") for i in range(60)), threads=4) == 60
    assert 1 < peak[0] <= 4 and sorted(seen) == sorted(f"k{i}" for i in range(60))
    with pytest.raises(OSError, match="disk full"):
        put_many_with_pool(put, [("a", b""), ("bad", b""), ("c", b"")], threads=2)


@pytest.mark.integration
def test_s3_store_rides_out_a_flaky_server_and_counts_its_retries(s3_server, s3_bucket):
    from tests.fault_proxy import FaultProxy

    with FaultProxy(s3_server, error_rate=0.15, drop_rate=0.05, seed=3) as proxy:
        store = open_store(Settings(store_root=f"s3://{s3_bucket}/flaky", s3_endpoint_url=proxy.url))
        items = [(f"creatives/ds=2026-11-20/campaign=c/{i:03d}.png", f"png {i}".encode()) for i in range(40)]
        assert store.put_many(items) == 40
        assert store.list_keys("creatives/ds=2026-11-20/") == [key for key, _ in items]
        assert all(store.get_bytes(key) == data for key, data in items)
        stats = store.transfer_stats()
    assert proxy.counts["error"] > 0 and proxy.counts["drop"] > 0
    # Every injected fault cost one retried attempt, seen in the responses (a drop too: it is retried).
    assert stats["retries"] == proxy.counts["error"] + proxy.counts["drop"]


def test_a_full_disk_names_the_folder_and_leaves_nothing_half_written(tmp_path):
    import errno
    import subprocess

    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        store = LocalStore(folder)
        store.put_bytes("creatives/a.png", b"small")
        with pytest.raises(OSError, match="no space left on the disk that holds .*creatives.* 'creatives/b.png'") as error:
            store.put_bytes("creatives/b.png", b"\0" * 200_000)
        assert error.value.errno == errno.ENOSPC
        assert store.list_keys("creatives/") == ["creatives/a.png"]
        assert store.get_bytes("creatives/a.png") == b"small"
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)
