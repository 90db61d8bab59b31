"""The gallery: pick a date and a campaign, browse its creatives by z a page at a time, open one; it serves
reports and creatives, and nothing else of the store."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from pmg_tasks.gallery import PAGE_SIZE, create_app
from pmg_tasks.layout import creative_key, manifest_key, report_key, run_key, success_key
from pmg_tasks.store import open_store, write_json, write_table

DS = "2026-11-20"
CREATIVES = 60


def manifest(campaign_id: str = "winter") -> pd.DataFrame:
    """Two users per creative; creative i has z = -i/100, so the best is c000."""
    rows = []
    for i in range(CREATIVES):
        cid = f"{i:04d}abcd"
        for user in ("u1", "u2") if i % 2 == 0 else ("u3",):
            rows.append({
                "campaign_id": campaign_id, "user_id": user, "item_id": "m1", "rank": 1, "creative_id": cid,
                "image_key": creative_key(DS, campaign_id, cid), "segment_id": "s1", "d_p": 0.5, "d_t": 0.6,
                "consistency": 0.4, "z": -i / 100, "headline": f"<b>Headline {i}</b>", "prompt": f"prompt {i}",
                "negative_prompt": "blurry", "preference_tokens": ["<pref_txt_0_1>"],
                "preference_keywords": ["noir", "rain"], "target_keywords": ["coat"],
            })  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture
def client_and_store(settings):
    store = open_store(settings)
    store.put_bytes(report_key(DS), b"<html>report</html>")
    write_json(store, success_key(DS), {"rows": 3})
    store.put_bytes(report_key("2026-11-21"), b"<html>half</html>")
    store.put_bytes(creative_key(DS, "winter", "abc123"), b"\x89PNG fake")
    store.put_bytes(run_key(DS, "events.parquet"), b"private")
    write_table(store, manifest_key(DS, "winter"), manifest())
    write_table(store, run_key(DS, "histories.parquet"),
                pd.DataFrame({"user_id": ["u1", "u2", "u3"], "history_text": ["1. The Rain (Drama)", "2.", "3."]}))
    return TestClient(create_app(settings, airflow_auth=False)), store


def test_index_lists_runs_newest_first_with_status_and_campaigns(client_and_store):
    client, _ = client_and_store
    page = client.get("/").text
    assert page.index("2026-11-21") < page.index(DS)
    assert "incomplete" in page and "published" in page
    assert f"browse?ds={DS}&amp;campaign=winter" in page


def test_browse_pages_through_distinct_creatives_sorted_by_z(client_and_store):
    client, _ = client_and_store
    first = client.get("/browse", params={"ds": DS, "campaign": "winter"}).text
    zs = [float(z) for z in re.findall(r"data-z='([-0-9.]+)'", first)]
    assert len(zs) == PAGE_SIZE and zs == sorted(zs, reverse=True) and zs[0] == 0.0
    assert f"page 1 of {-(-CREATIVES // PAGE_SIZE)} ({CREATIVES} creatives)" in first
    assert "&lt;b&gt;Headline 0&lt;/b&gt;" in first and "<b>Headline 0</b>" not in first
    assert "<option selected>winter</option>" in first and f"<option selected>{DS}</option>" in first
    last = client.get("/browse", params={"ds": DS, "campaign": "winter", "page": 3}).text
    assert len(re.findall("data-z=", last)) == CREATIVES - 2 * PAGE_SIZE
    worst = client.get("/browse", params={"ds": DS, "campaign": "winter", "order": "worst"}).text
    assert float(re.findall(r"data-z='([-0-9.]+)'", worst)[0]) == pytest.approx(-(CREATIVES - 1) / 100)


def test_a_creative_shows_its_prompt_and_the_users_histories_and_tokens(client_and_store):
    client, _ = client_and_store
    page = client.get("/creative", params={"ds": DS, "campaign": "winter", "creative_id": "0000abcd"}).text
    assert "prompt 0" in page and "2 users" in page
    assert "1. The Rain (Drama)" in page and "&lt;pref_txt_0_1&gt;" in page and "noir, rain" in page
    missing = client.get("/creative", params={"ds": DS, "campaign": "winter", "creative_id": "ffffffff"})
    assert missing.status_code == 404


def test_serves_reports_and_creatives(client_and_store):
    client, _ = client_and_store
    report = client.get("/store/" + report_key(DS))
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    image = client.get("/store/" + creative_key(DS, "winter", "abc123"))
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    "key",
    ["runs/ds=2026-11-20/events.parquet", "reports/ds=2026-11-20/../../runs/ds=2026-11-20/events.parquet",
     "reports/ds=2026-11-20/%2e%2e/%2e%2e/runs/ds=2026-11-20/events.parquet",
     "creatives/ds=2026-11-20/campaign=winter/missing0.png", "models/gnn/LATEST",
     "manifests/ds=2026-11-20/campaign=winter/manifest.parquet", "/etc/passwd", "..%2f..%2fetc%2fpasswd",
     "creatives/ds=2026-11-20/campaign=../abc123.png"],
)
def test_refuses_everything_else(client_and_store, key):
    client, _ = client_and_store
    assert client.get("/store/" + key).status_code == 404


@pytest.mark.parametrize(
    "params",
    [{"ds": "../../etc", "campaign": "winter"}, {"ds": DS, "campaign": "../runs"}, {"ds": DS, "campaign": "spring"}],
)
def test_browse_refuses_what_is_not_a_published_campaign(client_and_store, params):
    client, _ = client_and_store
    assert client.get("/browse", params=params).status_code == 404


def test_with_airflow_auth_every_route_needs_a_login(settings):
    """The plugin's app asks Airflow who the user is; without a token that is a 401 (the real API server
    refusing a request is in tests/browser)."""
    client = TestClient(create_app(settings, airflow_auth=True))
    for path in ("/", "/browse?ds=2026-11-20&campaign=winter", "/store/" + report_key(DS)):
        assert client.get(path).status_code == 401


def test_plugin_registers_the_app():
    from plugins.pmg_gallery import PmgGalleryPlugin

    assert PmgGalleryPlugin.fastapi_apps[0]["url_prefix"] == "/pmg"
    assert np.array([link.name for link in PmgGalleryPlugin.operator_extra_links]).tolist() == ["Run report"]
