"""What a night of campaigns will cost, before it runs: users reached and distinct generations.

Read from the latest run on or before the date (its histories, preference segments and catalog), with the
plan stage's own audience rules, so the figure is what tonight's plan would make of last night's users.
One generation per (segment, target item) (or per (user, target item)) is the most the plan makes: it never
makes more, and makes fewer only where two prompts come out the same.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pmg_tasks import layout
from pmg_tasks.campaigns import Campaign, CampaignError
from pmg_tasks.plan.stage import select_audience
from pmg_tasks.store import ObjectStore, read_frame

if TYPE_CHECKING:
    from pmg_tasks.settings import Settings

RUN_WITH_HISTORIES = re.compile(r"^runs/ds=(\d{4}-\d{2}-\d{2})/histories\.parquet$")


def latest_run_on_or_before(store: ObjectStore, ds: str) -> str | None:
    """The latest date up to `ds` whose run built histories and preference tokens."""
    dates = sorted(
        m.group(1) for key in store.list_keys("runs/") if (m := RUN_WITH_HISTORIES.match(key)) and m.group(1) <= ds
    )
    for day in reversed(dates):
        if store.exists(layout.run_key(day, "preference_tokens.parquet")):
            return day
    return None


def estimate_night(settings: Settings, ds: str, campaigns: Sequence[Campaign]) -> dict[str, Any]:
    """Per campaign: users reached, target items and the most distinct generations its night costs (or
    the campaign error that would skip it); `basis` is the run the figures come from (None: no run yet)."""
    from pmg_tasks.store import open_store

    store = open_store(settings)
    basis = latest_run_on_or_before(store, ds)
    if basis is None:
        return {"basis": None, "campaigns": {}}
    histories = read_frame(store, layout.run_key(basis, "histories.parquet"))
    items = read_frame(store, layout.run_key(basis, "items.parquet")).drop_duplicates("item_id", keep="last")
    segments = read_frame(store, layout.run_key(basis, "preference_tokens.parquet")).set_index("user_id")["segment_id"]
    catalog = set(items["item_id"])
    figures = {}
    for campaign in campaigns:
        targets = campaign.targets_in(items)
        missing = [item for item in targets if item not in catalog]
        if missing or not targets:
            error = CampaignError(f"targets not in the catalog: {missing}" if missing else "no item matches")
            figures[campaign.campaign_id] = {"error": str(error)}
            continue
        users = select_audience(campaign, histories, ds)["user_id"]
        sharing = users.nunique() if campaign.personalization == "user" else segments.reindex(users).fillna("").nunique()
        figures[campaign.campaign_id] = {
            "users": int(users.nunique()),
            "targets": len(targets),
            "generations": int(sharing) * len(targets),
            "creatives": int(users.nunique()) * len(targets) * campaign.variants,
        }
    return {"basis": basis, "campaigns": figures}
