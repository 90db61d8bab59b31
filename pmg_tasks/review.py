"""The review gate: a campaign with `review: required` is published only once a person approves it.

The nightly (and a run of one campaign) publishes every other campaign at once and holds these; an Airflow
human-in-the-loop task per held campaign asks a reviewer, with a link to the campaign's section of the run
report (where its creatives are, held ones included). Approved: the campaign is published. Rejected: it is
not, and the decision is recorded with the reviewer's comment (runs/ds=.../review/<campaign>.json, and on
the report).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from pmg_tasks.layout import manifest_key, review_key, run_key
from pmg_tasks.store import open_store, read_json, write_json

if TYPE_CHECKING:
    from pmg_tasks.settings import Settings

log = logging.getLogger(__name__)

APPROVE, REJECT = "Approve", "Reject"


def held_campaigns(settings: Settings, ds: str) -> list[str]:
    """Campaigns planned for `ds` that wait for a review before they are published."""
    store = open_store(settings)
    index_key = run_key(ds, "campaigns/index.json")
    review = set(read_json(store, index_key).get("review", [])) if store.exists(index_key) else set()
    planned = read_json(store, run_key(ds, "stats/plan.json")).get("campaigns", [])
    return sorted(review.intersection(planned))


def record_decision(settings: Settings, ds: str, campaign_id: str, response: dict) -> dict:
    """Act on a reviewer's response (the HITL task's result): publish the campaign, or record why not and
    take away any manifest an earlier attempt published. Either way the report shows the decision."""
    from pmg_tasks.publish import publish_run

    store = open_store(settings)
    chosen = (response.get("chosen_options") or [""])[0]
    reviewer = response.get("responded_by_user") or {}
    decision = {
        "campaign_id": campaign_id, "state": "approved" if chosen == APPROVE else "rejected",
        "reviewer": reviewer.get("name") or reviewer.get("id") or "",
        "comment": str((response.get("params_input") or {}).get("comment") or ""),
        "responded_at": str(response.get("responded_at") or ""), "recorded_at": dt.datetime.now(dt.UTC).isoformat(),
    }  # fmt: skip
    write_json(store, review_key(ds, campaign_id), decision)
    if decision["state"] == "approved":
        log.info("campaign %s approved by %s: publishing", campaign_id, decision["reviewer"])
        publish_run(settings, ds, campaigns=[campaign_id])
    else:
        log.warning("campaign %s rejected by %s: %s", campaign_id, decision["reviewer"], decision["comment"])
        store.delete_prefix(manifest_key(ds, campaign_id))
        publish_run(settings, ds, campaigns=[])  # the report and the marker, with the decision on them
    return decision
