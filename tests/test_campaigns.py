from __future__ import annotations

import pytest

from pmg_tasks.campaigns import CampaignError, active_campaigns, load_campaigns

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


def write(tmp_path, text):
    path = tmp_path / "campaigns.yaml"
    path.write_text(text)
    return path


def test_active_campaigns_by_date(tmp_path):
    path = write(tmp_path, GOOD)
    assert [c.campaign_id for c in load_campaigns(path)] == ["winter", "spring"]
    assert [c.campaign_id for c in active_campaigns(path, "2026-11-20")] == ["winter"]
    assert active_campaigns(path, "2026-12-20") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("end_date: 2026-11-30", "end_date: 2026-10-30"), "campaign 'winter'.*before start_date"),
        (GOOD.replace("target_items: [m1]", "target_items: []"), "campaign 'winter': target_items"),
        (GOOD.replace("campaign_id: spring", "campaign_id: winter"), "appears twice"),
        (GOOD.replace("campaign_id: spring", "campaign_id: ../etc"), "campaign '../etc': campaign_id"),
        (GOOD.replace("candidates: 4", "candidates: 1"), "candidates .1. must be at least variants .2."),
        (GOOD.replace("variants: 2", "variants: 2\n    colour: red"), "colour.*Extra inputs"),
        ("campaigns: [", "not valid YAML"),
        (GOOD.replace("variants: 2", "variants: 2\n    personalization: everyone"), "personalization.*'segment' or 'user'"),
        (GOOD.replace("variants: 2", "variants: 2\n    denylist: [gore]\n    negative_prompt: blurry, Gore"),
         "negative_prompt names a word the denylist forbids"),
        (GOOD.replace("variants: 2", "variants: 2\n    consistency_weight: 2"), "consistency_weight"),
    ],
)
def test_errors_name_the_campaign_and_the_field(tmp_path, text, message):
    with pytest.raises(CampaignError, match=message):
        load_campaigns(write(tmp_path, text))


def test_missing_file_says_how_to_fix(tmp_path):
    with pytest.raises(CampaignError, match="PMG_CAMPAIGNS_FILE"):
        load_campaigns(tmp_path / "nope.yaml")


def test_new_fields_default_to_pmgs_choice_and_segment_sharing(tmp_path):
    winter = load_campaigns(write(tmp_path, GOOD))[0]
    assert (winter.personalization, winter.consistency_weight, winter.negative_prompt) == ("segment", 0.0, None)
    assert not winter.denied
