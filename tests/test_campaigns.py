from __future__ import annotations

import pandas as pd
import pytest

from pmg_tasks.campaigns import (
    CampaignError,
    active_campaigns,
    campaigns_for_run,
    load_campaigns,
    read_campaigns,
    snapshot_campaigns,
)
from pmg_tasks.settings import CampaignLimits

GOOD = """
campaigns:
  - campaign_id: winter
    start_date: 2026-11-01
    end_date: 2026-11-30
    target_items: [m1]
  - campaign_id: spring
    start_date: 2027-03-01
    end_date: 2027-03-31
    target_items: [m2]
    variants: 2
    candidates: 4
"""

WINTER = """\
name: Winter
start_date: 2026-11-01
end_date: 2026-11-30
target_items: [m1]
priority: 1
"""
AUTUMN = """\
start_date: 2026-10-01
end_date: 2026-11-30
target_filter: {categories: [Drama], attributes: {era: 1990s}, max_items: 2}
audience: {categories: [Drama], recency_days: 3, min_engagement: 2, max_users: 10}
personalization: user
image_size: 64
inference_steps: 4
priority: 5
review: required
"""


def write(tmp_path, text):
    path = tmp_path / "campaigns.yaml"
    path.write_text(text)
    return path


def folder(tmp_path, **files):
    path = tmp_path / "campaigns"
    path.mkdir(exist_ok=True)
    for name, text in files.items():
        (path / f"{name}.yaml").write_text(text)
    return path


def test_active_campaigns_by_date(tmp_path):
    path = write(tmp_path, GOOD)
    assert [c.campaign_id for c in load_campaigns(path)] == ["winter", "spring"]
    assert [c.campaign_id for c in active_campaigns(path, "2026-11-20")] == ["winter"]
    assert active_campaigns(path, "2026-12-20") == []


def test_a_folder_holds_one_campaign_per_file_named_by_it(tmp_path):
    found = read_campaigns(folder(tmp_path, winter=WINTER, autumn=AUTUMN))
    assert found.problems == []
    # Highest priority first.
    assert [c.campaign_id for c in found.active("2026-11-20")] == ["autumn", "winter"]
    assert [c.campaign_id for c in found.active("2026-10-20")] == ["autumn"]
    autumn = found.by_id("autumn")
    assert (autumn.review, autumn.personalization, autumn.audience.recency_days) == ("required", "user", 3)
    assert found.files == {"autumn": "autumn.yaml", "winter": "winter.yaml"}


def test_a_broken_campaign_is_a_problem_and_the_others_stay(tmp_path):
    path = folder(
        tmp_path, winter=WINTER,
        bad=WINTER + "colour: red\n", late=WINTER.replace("end_date: 2026-11-30", "end_date: 2026-10-30"),
        worse="start_date: [\n",
    )  # fmt: skip
    found = read_campaigns(path)
    assert [c.campaign_id for c in found.campaigns] == ["winter"]
    by_field = {(p.file, p.field): p for p in found.problems}
    assert by_field[("bad.yaml", "colour")].fix.startswith("remove it")
    assert "not valid YAML" in by_field[("worse.yaml", "")].message
    assert any("before start_date" in p.message for p in found.problems if p.file == "late.yaml")
    with pytest.raises(CampaignError, match="bad.yaml: campaign 'bad': colour"):
        load_campaigns(path)


def test_the_file_name_is_the_id(tmp_path):
    found = read_campaigns(folder(tmp_path, winter="campaign_id: summer\n" + WINTER))
    assert found.campaigns == []
    assert "rename the file to summer.yaml" in found.problems[0].fix


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("end_date: 2026-11-30", "end_date: 2026-10-30"), "campaign 'winter'.*before start_date"),
        (GOOD.replace("target_items: [m1]", "target_items: []"), "campaign 'winter'.*exactly one"),
        (GOOD.replace("campaign_id: spring", "campaign_id: winter"), "appears twice"),
        (GOOD.replace("campaign_id: spring", "campaign_id: ../etc"), "campaign '../etc': campaign_id"),
        (GOOD.replace("candidates: 4", "candidates: 1"), "candidates .1. must be at least variants .2."),
        (GOOD.replace("variants: 2", "variants: 2\n    colour: red"), "colour.*Extra inputs"),
        ("campaigns: [", "not valid YAML"),
        (GOOD.replace("variants: 2", "variants: 2\n    personalization: everyone"), "personalization.*'segment' or 'user'"),
        (GOOD.replace("variants: 2", "variants: 2\n    denylist: [gore]\n    negative_prompt: blurry, Gore"),
         "negative_prompt names a word the denylist forbids"),
        (GOOD.replace("variants: 2", "variants: 2\n    consistency_weight: 2"), "consistency_weight"),
        (GOOD.replace("variants: 2", "variants: 2\n    review: maybe"), "review.*'required' or 'none'"),
        (GOOD.replace("variants: 2", "variants: 2\n    target_filter: {categories: [Drama]}"), "exactly one"),
    ],
)
def test_errors_name_the_campaign_and_the_field(tmp_path, text, message):
    with pytest.raises(CampaignError, match=message):
        load_campaigns(write(tmp_path, text))


def test_image_size_and_steps_stay_within_the_profile(tmp_path):
    path = folder(tmp_path, big=AUTUMN.replace("image_size: 64", "image_size: 512"),
                  slow=AUTUMN.replace("inference_steps: 4", "inference_steps: 99"),
                  odd=AUTUMN.replace("image_size: 64", "image_size: 60"), fine=AUTUMN)  # fmt: skip
    found = read_campaigns(path, CampaignLimits(max_image_size=128, max_inference_steps=10))
    assert [c.campaign_id for c in found.campaigns] == ["fine"]
    assert {p.campaign_id: p.field for p in found.problems} == {"big": "", "slow": "", "odd": ""}
    assert all("limit of the settings profile" in p.message for p in found.problems)
    # The production profile allows big pictures.
    assert read_campaigns(path, CampaignLimits(max_image_size=1024, max_inference_steps=60)).by_id("big")


def test_missing_folder_says_how_to_fix(tmp_path):
    with pytest.raises(CampaignError, match="PMG_CAMPAIGNS_FILE"):
        load_campaigns(tmp_path / "nope")


def test_a_target_filter_picks_catalog_items_by_category_and_attribute(tmp_path):
    autumn = read_campaigns(folder(tmp_path, autumn=AUTUMN)).by_id("autumn")
    items = pd.DataFrame({
        "item_id": ["m4", "m1", "m2", "m3"],
        "categories": ["Drama|Romance", "Drama", "Comedy", "Drama"],
        "attributes": ['{"era": "1990s"}', '{"era": "1990s"}', '{"era": "1990s"}', '{"era": "1980s"}'],
    })  # fmt: skip
    assert autumn.targets_in(items) == ["m1", "m4"]
    assert autumn.targets_in(items.set_index("item_id")) == ["m1", "m4"]


def test_new_fields_default_to_pmgs_choice_and_segment_sharing(tmp_path):
    winter = load_campaigns(write(tmp_path, GOOD))[0]
    assert (winter.personalization, winter.consistency_weight, winter.negative_prompt) == ("segment", 0.0, None)
    assert (winter.review, winter.priority, winter.image_size) == ("none", 0, None)
    assert not winter.denied


def test_the_run_keeps_a_copy_of_the_campaigns_in_force(settings, tmp_path):
    path = folder(tmp_path, winter=WINTER, bad="start_date: [\n")
    settings = settings.model_copy(update={"campaigns_file": str(path)})
    index = snapshot_campaigns(settings, "2026-11-20")
    assert (index["active"], index["files"]) == (["winter"], ["bad.yaml", "winter.yaml"])
    assert [p["file"] for p in index["problems"]] == ["bad.yaml"]
    # The files change after the run: the run's campaigns do not.
    (path / "winter.yaml").write_text(WINTER.replace("priority: 1", "priority: 9"))
    (path / "bad.yaml").unlink()
    kept = campaigns_for_run(settings, "2026-11-20")
    assert kept.by_id("winter").priority == 1 and [p.file for p in kept.problems] == ["bad.yaml"]
    assert read_campaigns(path).by_id("winter").priority == 9
