"""Planning turns campaigns into deduplicated, sharded requests; publishing turns results into manifests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from pmg_tasks.campaigns import CampaignError
from pmg_tasks.layout import manifest_key, report_key, run_key, shard_key, success_key
from pmg_tasks.plan import build_prompt, plan_generation
from pmg_tasks.publish import publish_run
from pmg_tasks.settings import Settings
from pmg_tasks.store import open_store, read_frame, write_table
from tests.conftest import DS
from tests.pipeline import run_stages_until


@pytest.fixture(scope="module")
def planned_home(tmp_path_factory) -> Path:
    """A seeded shop run through every stage up to plan, once for the whole module."""
    from pmg_tasks.cli import seed_demo

    home = tmp_path_factory.mktemp("planned") / "pmg"
    settings = Settings(home=home)
    seed_demo(settings, DS, users=60, items=40, days=7, overwrite_campaigns=True)
    run_stages_until(settings, DS, "plan")
    return home


@pytest.fixture
def planned(planned_home, tmp_path) -> Settings:
    """A private copy of the planned run, so a test may change it."""
    home = tmp_path / "pmg"
    shutil.copytree(planned_home, home)
    return Settings(home=home)


def test_prompt_puts_the_target_first_and_the_taste_after():
    prompt = build_prompt("neon poster", "The Iron Harbor", ["sci-fi", "tense"], ["noir", "1990s"])
    assert prompt == "neon poster, The Iron Harbor, sci-fi, tense, in the taste of: noir, 1990s"


def test_requests_follow_campaigns_and_audiences(planned, run_date):
    store = open_store(planned)
    requests = read_frame(store, run_key(run_date, "requests.parquet"))
    histories = read_frame(store, run_key(run_date, "histories.parquet")).set_index("user_id")
    by_campaign = requests.groupby("campaign_id")
    # The demo campaigns: 12 users x 2 items, and 8 Sci-Fi/Action users x 1 item.
    assert by_campaign.size().to_dict() == {"sci-fi-weekend": 8, "winter-classics": 24}
    scifi = requests[requests["campaign_id"] == "sci-fi-weekend"]
    assert all({"Sci-Fi", "Action"} & set(histories.at[u, "categories"]) for u in scifi["user_id"])
    assert not requests["prompt"].str.contains("gore|violence").any()
    assert (requests["segment_id"] != "").all()


def test_identical_prompts_are_generated_once_and_shards_cover_every_signature(planned, run_date):
    store = open_store(planned)
    requests = read_frame(store, run_key(run_date, "requests.parquet"))
    shard_keys = store.list_keys(run_key(run_date, "shards/"))
    shards = pd.concat([read_frame(store, k) for k in shard_keys])
    assert shards["signature"].is_unique
    assert set(shards["signature"]) == set(requests["signature"])
    assert len(shards) == requests["signature"].nunique()
    assert (shards.groupby("signature")["prompt"].first() == requests.groupby("signature")["prompt"].first()).all()


def test_shards_stay_under_the_map_limit(planned, run_date):
    settings = planned.model_copy(update={"generation": planned.generation.model_copy(
        update={"requests_per_shard": 1, "max_shards": 5})})
    shards = plan_generation(settings, run_date)
    assert len(shards) <= 5
    assert open_store(settings).list_keys(run_key(run_date, "shards/")) == [shard_key(run_date, i) for i in shards]


def test_unknown_target_item_names_the_campaign(planned, run_date):
    path = Path(planned.campaigns_file)
    path.write_text(path.read_text().replace("target_items: [", "target_items: [m-nope, ", 1))
    with pytest.raises(ValueError, match="campaign 'winter-classics' targets items not in the catalog: \\['m-nope'\\]"):
        plan_generation(planned, run_date)


def test_broken_campaign_file_is_a_campaign_error(planned, run_date):
    Path(planned.campaigns_file).write_text("campaigns:\n  - campaign_id: X Y\n")
    with pytest.raises(CampaignError, match="campaign 'X Y'"):
        plan_generation(planned, run_date)


def test_publish_refuses_when_a_shard_did_not_finish(planned, run_date):
    with pytest.raises(RuntimeError, match="rerun the failed generate_shard"):
        publish_run(planned, run_date)
    assert not open_store(planned).exists(success_key(run_date))


def test_publish_writes_manifests_report_and_success_last(planned, run_date, test_size_models):
    from pmg_tasks.generate.shard import generate_shard

    settings = planned.model_copy(update={"models": test_size_models})
    store = open_store(settings)
    for index in range(len(store.list_keys(run_key(run_date, "shards/")))):
        generate_shard(settings, run_date, index)
    # A hostile prompt must reach the report as text, not markup.
    requests = read_frame(store, run_key(run_date, "requests.parquet"))
    requests.loc[0, "prompt"] = "<script>alert(1)</script>"
    write_table(store, run_key(run_date, "requests.parquet"), requests)

    result = publish_run(settings, run_date)

    assert result["rows"] == int(requests["variants"].sum())
    for campaign_id in requests["campaign_id"].unique():
        rows = read_frame(store, manifest_key(run_date, campaign_id))
        assert (rows["campaign_id"] == campaign_id).all()
        assert rows["image_key"].map(store.exists).all()
    report = store.get_bytes(report_key(run_date)).decode()
    assert "<script>alert(1)</script>" not in report and "&lt;script&gt;" in report
    assert store.exists(success_key(run_date))
