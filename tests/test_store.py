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
