"""The counts a plan is made of: who a capped audience keeps, and how many candidates each generation draws."""

from __future__ import annotations

import pytest

from pmg_tasks.layout import run_key
from pmg_tasks.plan import plan_generation
from pmg_tasks.store import open_store, read_frame
from tests.conftest import DS
from tests.plan import test_plan as base
from tests.plan.test_plan import edit_campaigns, outputs

# The planned demo run of the planning tests, shared.
planned_home, planned = base.planned_home, base.planned


def test_a_capped_audience_keeps_the_most_engaged_users(planned):
    edit_campaigns(planned, audience={"max_users": 3})
    plan_generation(planned, DS)
    requests, _, _ = outputs(planned)
    histories = read_frame(open_store(planned), run_key(DS, "histories.parquet"))
    expected = histories.sort_values(["engagement", "user_id"], ascending=[False, True])["user_id"].head(3)
    assert histories["engagement"].nunique() > 3, "the demo must have users of different engagement"
    for _, campaign in requests.groupby("campaign_id"):
        assert sorted(campaign["user_id"].unique()) == sorted(expected)


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"variants": 1, "candidates": None}, 2),  # the settings' default k
        ({"variants": 3, "candidates": None}, 3),  # never fewer candidates than creatives a user keeps
        ({"variants": 1, "candidates": 4}, 4),  # the campaign's own k
    ],
)
def test_each_generation_draws_the_campaigns_candidates_and_never_fewer_than_its_variants(
    planned, changes, expected
):
    assert planned.generation.candidates_per_request == 2
    edit_campaigns(planned, **changes)
    plan_generation(planned, DS)
    _, generations, _ = outputs(planned)
    assert len(generations) and set(generations["candidates"]) == {expected}
    assert (generations["candidates"] >= generations["variants"]).all()
