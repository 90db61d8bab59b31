"""pmg_nightly: last night's clickstream in, personalized creatives and their scores out.

    campaigns -> extract -> validate -> histories -> keyword_shards -> keywords (one per user shard)
      -> merge_keywords -> preference_tokens -> token_embeddings (GPU) ------------------------------.
                                             -> plan (one generation per segment x target) -> headlines
                                                -> generate (one task per shard, GPU) -> publish
      -> per campaign with `review: required`: held_<id> -> review_<id> (a person approves) -> decide_<id>

campaigns copies the campaigns in force into the run's folder; every later stage reads that copy, and a
broken campaign is skipped and named (in the log and the report) instead of failing the night.
preference_tokens waits for the keywords: it describes each token by the keywords of the users behind it,
so a rerun must see the same keywords to write the same descriptors. token_embeddings (textual inversion of
the tokens in use) and plan run side by side; generate needs both, and the headlines.

Wiring only: every stage is a plain function in pmg_tasks (its task in pmg_tasks/dag_parts.py), and heavy
libraries load inside task bodies. A run triggered on day D processes day D - 1, the last complete one;
`params.ds` reprocesses any date. Stages exchange files in the object store; XCom carries only dates, counts
and keys.
"""

from __future__ import annotations

import datetime as dt
import importlib

from airflow.sdk import Param, dag, task

from pmg_tasks import dag_parts
from pmg_tasks.dag_parts import CREATIVE_MANIFESTS
from pmg_tasks.settings import Settings
from pmg_tasks.watch.alerts import deadline_alert, task_timeout

# The stage tasks take their pools, queues and timeouts from the settings when this file is parsed: a
# parse in a process that parsed it before must see today's settings, as a fresh parsing process does.
dag_parts = importlib.reload(dag_parts)

SCHEDULE = "0 2 * * *"

# Campaigns that require a review get a gate each (read when this file is parsed; a campaign held tonight
# without a gate stays held until the file is parsed again and the night rerun).
REVIEWED = dag_parts.review_campaign_ids()


@dag(
    dag_id="pmg_nightly",
    schedule=SCHEDULE,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["pmg", "nightly", "creatives"],
    doc_md=__doc__,
    params={"ds": Param(None, type=["null", "string"], description="YYYY-MM-DD to process instead of D-1")},
    dagrun_timeout=dt.timedelta(hours=dag_parts.SETTINGS.watching.dagrun_timeout_h),
    deadline=deadline_alert(dag_parts.SETTINGS, SCHEDULE),
    default_args=dag_parts.default_args("data-engineering"),
)
def pmg_nightly():
    @task(execution_timeout=task_timeout(dag_parts.SETTINGS, "campaigns"))
    def campaigns(day: str) -> dict:
        """The campaigns in force, copied into the run's folder; a broken campaign is named and skipped."""
        from pmg_tasks.campaigns import snapshot_campaigns

        return snapshot_campaigns(Settings(), day)

    @task(outlets=[CREATIVE_MANIFESTS], execution_timeout=task_timeout(dag_parts.SETTINGS, "publish"))
    def publish(day: str) -> dict:
        """Every campaign but those waiting for review; the report shows them all."""
        from pmg_tasks.publish import publish_run
        from pmg_tasks.review import held_campaigns

        held = held_campaigns(Settings(), day)
        return {**publish_run(Settings(), day, held=held), "ds": day, "held": held}

    day = dag_parts.run_date()
    embeddings, shards = dag_parts.nightly_stages(day, campaigns(day))
    titles = dag_parts.headlines(day)
    generated = dag_parts.generate.partial(day=day).expand(shard_index=shards)
    shards >> titles
    published = dag_parts.with_report_link(publish(day))
    [embeddings, titles] >> generated >> published
    dag_parts.review_gates(day, published, REVIEWED)


pmg_nightly()
