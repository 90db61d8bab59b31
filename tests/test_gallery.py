"""The gallery serves reports and creatives, and nothing else of the store."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from pmg_tasks.gallery import create_app
from pmg_tasks.layout import creative_key, report_key, run_key, success_key
from pmg_tasks.store import open_store, write_json


@pytest.fixture
def client_and_store(settings):
    store = open_store(settings)
    store.put_bytes(report_key("2026-11-20"), b"<html>report</html>")
    write_json(store, success_key("2026-11-20"), {"rows": 3})
    store.put_bytes(report_key("2026-11-21"), b"<html>half</html>")
    store.put_bytes(creative_key("2026-11-20", "winter", "abc123"), b"\x89PNG fake")
    store.put_bytes(run_key("2026-11-20", "events.parquet"), b"private")
    return TestClient(create_app(settings)), store


def test_index_lists_runs_newest_first_with_status(client_and_store):
    client, _ = client_and_store
    page = client.get("/").text
    assert page.index("2026-11-21") < page.index("2026-11-20")
    assert "incomplete" in page and "published" in page


def test_serves_reports_and_creatives(client_and_store):
    client, _ = client_and_store
    report = client.get("/store/" + report_key("2026-11-20"))
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    image = client.get("/store/" + creative_key("2026-11-20", "winter", "abc123"))
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    "key",
    ["runs/ds=2026-11-20/events.parquet", "reports/ds=2026-11-20/../../runs/ds=2026-11-20/events.parquet",
     "creatives/ds=2026-11-20/campaign=winter/missing0.png", "models/gnn/LATEST"],
)
def test_refuses_everything_else(client_and_store, key):
    client, _ = client_and_store
    assert client.get("/store/" + key).status_code == 404


def test_plugin_registers_the_app():
    from plugins.pmg_gallery import PmgGalleryPlugin

    assert PmgGalleryPlugin.fastapi_apps[0]["url_prefix"] == "/pmg"
