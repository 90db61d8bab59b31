"""pmg_campaign_run: one campaign, now. The trigger form is the form marketing ops fill in.

    campaign (the one chosen, with the form's changes) -> extract .. plan (the nightly's stages)
      -> [dry run: stop here, the plan's costs are in the plan task's log and stats/plan.json]
      -> headlines -> generate -> publish (this campaign's manifest only; the others' stay)
      -> where it requires review: held_<id> -> review_<id> (a person approves) -> decide_<id>

The form: the campaign (a list of the valid campaigns in the campaigns folder, read when the DAG file is
parsed), the date (default: yesterday), and for this run only: variants, alpha, and a dry run that plans
and prices the night without drawing a picture. The campaign copied into the run's folder carries the
changes, so the run can be explained later.
"""

from __future__ import annotations

import datetime as dt
import importlib

from airflow.sdk import Param, dag, task

from pmg_tasks import dag_parts
from pmg_tasks.dag_parts import CREATIVE_MANIFESTS
from pmg_tasks.settings import Settings

# The stage tasks take their pools, queues and timeouts from the settings when this file is parsed: a
# parse in a process that parsed it before must see today's settings, as a fresh parsing process does.
dag_parts = importlib.reload(dag_parts)

def campaign_choices() -> list[str]:
    """The valid campaigns' ids, for the form's list; a placeholder where there is none yet."""
    from pmg_tasks.campaigns import read_campaigns

    settings = Settings()
    ids = sorted(c.campaign_id for c in read_campaigns(settings.campaigns_file, settings.campaign_limits).campaigns)
    return ids or ["no-valid-campaign"]


CHOICES = campaign_choices()


@dag(
    dag_id="pmg_campaign_run",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["pmg", "campaigns", "creatives"],
    doc_md=__doc__,
    params={
        "campaign_id": Param(CHOICES[0], type="string", enum=CHOICES, title="Campaign",
                             description="a valid campaign of the campaigns folder"),
        "ds": Param(None, type=["null", "string"], format="date", title="Date",
                    description="the night to make creatives for (default: yesterday)"),
        "variants": Param(None, type=["null", "integer"], minimum=1, maximum=16, title="Variants",
                          description="creatives per user and target item, for this run (default: the campaign's)"),
        "alpha": Param(None, type=["null", "number"], minimum=0.0, maximum=1.0, title="Alpha",
                       description="1 = choose by the user's taste only, 0 = by the item only (default: the campaign's)"),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="plan and price the night, draw nothing, publish nothing"),
    },  # fmt: skip
    default_args=dag_parts.default_args("marketing-ops"),
)
def pmg_campaign_run():
    @task
    def campaign(day: str, **context) -> dict:
        """The chosen campaign, with the form's changes, copied into the run's folder as the only one."""
        from pmg_tasks.campaigns import CampaignError, snapshot_campaigns

        params = context["params"]
        overrides = {name: params[name] for name in ("variants", "alpha") if params.get(name) is not None}
        try:
            return snapshot_campaigns(Settings(), day, only=params["campaign_id"], overrides=overrides)
        except CampaignError as error:
            raise dag_parts.fail_without_retry(error) from error

    @task.short_circuit
    def draw(shards: list[int], **context) -> bool:
        """A dry run ends after the plan: its costs are written; nothing is drawn or published."""
        return not context["params"]["dry_run"]

    @task(outlets=[CREATIVE_MANIFESTS])
    def publish(day: str, **context) -> dict:
        """This campaign only; held instead where it requires a review (the report shows it either way)."""
        from pmg_tasks.publish import publish_run
        from pmg_tasks.review import held_campaigns

        held = held_campaigns(Settings(), day)
        chosen = [] if context["params"]["campaign_id"] in held else [context["params"]["campaign_id"]]
        return {**publish_run(Settings(), day, campaigns=chosen), "ds": day, "held": held}

    day = dag_parts.run_date()
    embeddings, shards = dag_parts.nightly_stages(day, campaign(day))
    go = draw(shards)
    titles = dag_parts.headlines(day)
    generated = dag_parts.generate.partial(day=day).expand(shard_index=shards)
    go >> titles
    published = dag_parts.with_report_link(publish(day))
    [embeddings, titles] >> generated >> published
    dag_parts.review_gates(day, published, dag_parts.review_campaign_ids())


pmg_campaign_run()
