"""A night with a review gate, run for real, and looked at in a real browser.

One Airflow API server on loopback (with logins on) serves the whole module: `airflow dags test pmg_nightly`
runs against its metadata database, stops at the human-in-the-loop tasks of the two campaigns that require
review, and a reviewer answers through the API (approve one, reject the other with a comment). Headless
Chromium then opens the report and the gallery served by that server, and screenshots go to
test-artifacts/browser/ (or $PMG_TEST_ARTIFACTS).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from pmg_tasks.airflow_run import _recorded_run, logical_date_for, prepare_airflow
from pmg_tasks.layout import manifest_key, report_key, review_key
from pmg_tasks.store import open_store, read_json
from tests.browser.cdp import Browser, find_chromium
from tests.conftest import DS, free_port

pytestmark = [pytest.mark.night, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

REVIEWER, PASSWORD = "reviewer", "pmg-review-secret"
ARTIFACTS = Path(os.environ.get("PMG_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")) / "browser"


def write_campaigns(folder: Path) -> None:
    """The demo's two campaigns, sci-fi-weekend now under review, and a third under review to reject."""
    sci_fi = (folder / "sci-fi-weekend.yaml").read_text().replace("review: none", "review: required")
    (folder / "sci-fi-weekend.yaml").write_text(sci_fi)
    (folder / "late-night.yaml").write_text(
        sci_fi.replace("name: Sci-fi weekend", "name: Late night").replace("max_users: 8", "max_users: 3")
    )
    # Two broken campaigns: one the schema refuses, one whose target the catalog lacks. Neither stops the night.
    (folder / "typo.yaml").write_text(sci_fi.replace("priority: 5", "priorty: 5"))
    (folder / "gone.yaml").write_text(sci_fi.replace("review: required", "review: none").replace(
        "target_items: [", "target_items: [m-gone, "))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, test_size_models):
    """A seeded home, its Airflow metadata database, and `airflow api-server` on 127.0.0.1 with logins."""
    from pmg_tasks.cli import seed_demo
    from pmg_tasks.settings import Settings

    home = tmp_path_factory.mktemp("reviewed") / "pmg"
    settings = Settings(home=home, models=test_size_models)
    seed_demo(settings, DS, users=60, items=40, days=7, overwrite_campaigns=True)
    write_campaigns(Path(settings.campaigns_file))
    settings = settings.model_copy(update={"retries": settings.retries.model_copy(update={"per_task": 0})})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({REVIEWER: PASSWORD}))
    env = {
        **prepare_airflow(settings),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{REVIEWER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__API_AUTH__JWT_SECRET": "pmg-test-jwt-secret",
        "AIRFLOW__API__WORKERS": "1",
    }
    log = open(home / "api-server.log", "w")
    server = subprocess.Popen(
        [shutil.which("airflow", path=env["PATH"]), "api-server", "-H", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                pytest.fail(f"airflow api-server exited: {(home / 'api-server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        else:
            pytest.fail("airflow api-server did not answer within 120 s")
        token = httpx.post(f"{base}/auth/token", json={"username": REVIEWER, "password": PASSWORD}, timeout=10)
        token.raise_for_status()
        yield {"settings": settings, "env": env, "base": base, "token": token.json()["access_token"]}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def pending_reviews(stack) -> list[dict]:
    answer = httpx.get(f"{stack['base']}/api/v2/dags/~/dagRuns/~/hitlDetails", params={"response_received": False},
                       headers={"Authorization": f"Bearer {stack['token']}"}, timeout=10)  # fmt: skip
    answer.raise_for_status()
    return list(answer.json()["hitl_details"])


@pytest.fixture(scope="module")
def reviewed_night(stack):
    """Run the night; at the gates, check what is already out, then approve one campaign and reject one."""
    settings, env = stack["settings"], stack["env"]
    store = open_store(settings)
    log_path = settings.home / "dags-test.log"
    with open(log_path, "w") as log:
        run = subprocess.Popen([shutil.which("airflow", path=env["PATH"]), "dags", "test", "pmg_nightly",
                                logical_date_for(DS)], env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            while len(reviews := pending_reviews(stack)) < 2:
                assert run.poll() is None, f"the run ended before its reviews: {log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no review was asked for within 600 s"
                time.sleep(2)
            # While the reviews wait, the campaign without one is out, the others are not.
            before = {c: store.exists(manifest_key(DS, c)) for c in ("winter-classics", "sci-fi-weekend", "late-night")}
            report_while_held = store.get_bytes(report_key(DS)).decode()
            answers = {"review_sci_fi_weekend": ("Approve", "on brand"), "review_late_night": ("Reject", "off brand")}
            for review in reviews:
                ti = review["task_instance"]
                choice, comment = answers[ti["task_id"]]
                answer = httpx.patch(
                    f"{stack['base']}/api/v2/dags/{ti['dag_id']}/dagRuns/{ti['dag_run_id']}/taskInstances/"
                    f"{ti['task_id']}/{ti['map_index']}/hitlDetails",
                    json={"chosen_options": [choice], "params_input": {"comment": comment}},
                    headers={"Authorization": f"Bearer {stack['token']}"}, timeout=10,
                )  # fmt: skip
                assert answer.status_code == 200, answer.text
            assert run.wait(timeout=300) == 0, log_path.read_text()[-3000:]
        finally:
            if run.poll() is None:
                run.kill()
    recorded = _recorded_run(env, logical_date_for(DS))
    return {"before": before, "reviews": reviews, "report_while_held": report_while_held, "recorded": recorded,
            "store": store}  # fmt: skip


def test_campaigns_under_review_wait_for_a_person_and_the_others_do_not(reviewed_night):
    night = reviewed_night
    assert night["before"] == {"winter-classics": True, "sci-fi-weekend": False, "late-night": False}
    assert "class='state held'" in night["report_while_held"]
    bodies = {r["task_instance"]["task_id"]: r["body"] for r in night["reviews"]}
    assert f"/pmg/store/reports/ds={DS}/index.html#campaign-late-night" in bodies["review_late_night"]
    recorded = night["recorded"]
    assert recorded["state"] == "success" and set(recorded["task_states"]) == {"success"}, recorded
    store = night["store"]
    # Approved: published. Rejected: not, recorded with who and why, and said on the report.
    assert store.exists(manifest_key(DS, "sci-fi-weekend")) and not store.exists(manifest_key(DS, "late-night"))
    rejected = read_json(store, review_key(DS, "late-night"))
    assert (rejected["state"], rejected["reviewer"], rejected["comment"]) == ("rejected", REVIEWER, "off brand")
    assert read_json(store, review_key(DS, "sci-fi-weekend"))["state"] == "approved"
    report = store.get_bytes(report_key(DS)).decode()
    assert f"class='state rejected'>rejected</span> by {REVIEWER}: off brand" in report
    success = read_json(store, f"manifests/ds={DS}/_SUCCESS")
    assert sorted(success["manifests"]) == ["sci-fi-weekend", "winter-classics"]
    # The broken campaigns were skipped and named; the run kept the files it ran with.
    page = report.replace("&#x27;", "'")
    assert "typo.yaml: campaign typo: priorty: Extra inputs" in page
    assert "gone.yaml: campaign gone: target_items: campaign 'gone' targets items not in the catalog: ['m-gone']" in page
    index = read_json(store, f"runs/ds={DS}/campaigns/index.json")
    assert "typo.yaml" in index["files"] and index["review"] == ["late-night", "sci-fi-weekend"]


def test_the_publish_task_links_to_the_run_report(stack, reviewed_night):
    run_id = reviewed_night["recorded"]["run_id"]
    answer = httpx.get(f"{stack['base']}/api/v2/dags/pmg_nightly/dagRuns/{run_id}/taskInstances/publish/links",
                       headers={"Authorization": f"Bearer {stack['token']}"}, timeout=10)  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json()["extra_links"]["Run report"] == f"{stack['base']}/pmg/store/reports/ds={DS}/index.html"


def test_the_gallery_refuses_a_request_without_a_login(stack, reviewed_night):
    for path in ("/pmg/", f"/pmg/browse?ds={DS}&campaign=winter-classics", f"/pmg/store/{report_key(DS)}"):
        assert httpx.get(stack["base"] + path, timeout=10).status_code == 401, path
        assert httpx.get(stack["base"] + path, headers={"Authorization": f"Bearer {stack['token']}"},
                         timeout=10).status_code == 200, path  # fmt: skip
    assert httpx.get(stack["base"] + "/pmg/store/runs/ds=2026-11-20/events.parquet",
                     headers={"Authorization": f"Bearer {stack['token']}"}, timeout=10).status_code == 404  # fmt: skip


@pytest.fixture(scope="module")
def browser(stack):
    executable = find_chromium()
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium): the browser tests need it")
    opened = Browser(executable)
    opened.set_cookie(stack["base"], "_token", stack["token"])
    yield opened
    opened.close()


def test_the_report_renders_creatives_scores_and_plots(browser, stack, reviewed_night):
    store = reviewed_night["store"]
    for where, url in (("folder", store.path(report_key(DS)).as_uri()),
                       ("gallery", f"{stack['base']}/pmg/store/{report_key(DS)}")):  # fmt: skip
        browser.open(url)
        seen = browser.evaluate("""(() => {
            const images = Array.from(document.querySelectorAll('figure.creative img'));
            const plots = Array.from(document.querySelectorAll('img.plot'));
            return {creatives: images.length, broken: images.filter(i => !i.naturalWidth).length,
                    plots: plots.length, drawn: plots.filter(p => p.naturalWidth > 100).length,
                    scores: document.querySelectorAll('figure.creative .z').length,
                    sections: Array.from(document.querySelectorAll('section')).map(s => s.dataset.campaign),
                    tiles: document.querySelectorAll('.strip .tile').length};
        })()""")
        browser.screenshot(ARTIFACTS / f"report-{where}.png")
        assert seen["creatives"] > 0 and seen["broken"] == 0, (where, seen)
        assert seen["scores"] == seen["creatives"]
        assert seen["plots"] >= 5 and seen["drawn"] == seen["plots"], (where, seen)
        assert seen["sections"] == ["late-night", "sci-fi-weekend", "winter-classics"]
        assert seen["tiles"] >= 8


def test_the_gallery_browses_a_campaign_by_z_and_opens_a_creative(browser, stack, reviewed_night):
    base = stack["base"]
    browser.open(f"{base}/pmg/")
    assert "winter-classics" in browser.evaluate("document.body.innerText")
    browser.screenshot(ARTIFACTS / "gallery-index.png")
    browser.open(f"{base}/pmg/browse?ds={DS}&campaign=sci-fi-weekend")
    cards = browser.evaluate("""Array.from(document.querySelectorAll('.card')).map(c => ({
        z: parseFloat(c.dataset.z), loaded: c.querySelector('img').naturalWidth > 0,
        text: c.innerText}))""")
    browser.screenshot(ARTIFACTS / "gallery-browse.png")
    assert cards and all(card["loaded"] for card in cards)
    assert [c["z"] for c in cards] == sorted((c["z"] for c in cards), reverse=True)
    assert all("z=" in card["text"] and "d_p=" in card["text"] for card in cards)
    browser.evaluate("document.querySelector('.card a').click()")
    time.sleep(1)
    browser.open(browser.evaluate("location.href"))
    text = browser.evaluate("document.body.innerText")
    browser.screenshot(ARTIFACTS / "gallery-creative.png")
    assert "Prompt" in text and "Who got it" in text and "<pref_" in text
    assert browser.evaluate("document.querySelector('img.big').naturalWidth") > 0
