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

# Campaigns that require a review get a gate each (read when this file is parsed; a campaign held tonight
# without a gate stays held until the file is parsed again and the night rerun).
REVIEWED = dag_parts.review_campaign_ids()


def _failed_shards(context, planned: list[int]) -> list[int]:
    """The shards whose generate task of this run did not succeed (map index i is shard planned[i])."""
    ti = context["ti"]
    states = ti.get_task_states(dag_id=ti.dag_id, task_ids=["generate"], run_ids=[ti.run_id]).get(ti.run_id, {})
    return [shard for i, shard in enumerate(planned) if states.get(f"generate_{i}") != "success"]


@dag(
    dag_id="pmg_nightly",
    schedule=dag_parts.SETTINGS.watching.schedule or None,  # empty: only when triggered
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["pmg", "nightly", "creatives"],
    doc_md=__doc__,
    params={
        "ds": Param(None, type=["null", "string"], description="YYYY-MM-DD to process instead of D-1"),
        "publish_partial": Param(
            False, type="boolean",
            description="publish what the finished shards made when some failed; manifests and _SUCCESS name "
            "the missing requests (off: publish fails, naming the failed shards, and writes no _SUCCESS)",
        ),
    },
    dagrun_timeout=dt.timedelta(hours=dag_parts.SETTINGS.watching.dagrun_timeout_h),
    deadline=deadline_alert(dag_parts.SETTINGS),
    default_args=dag_parts.default_args("data-engineering"),
)
def pmg_nightly():
    @task(execution_timeout=task_timeout(dag_parts.SETTINGS, "campaigns"))
    def campaigns(day: str) -> dict:
        """The campaigns in force, copied into the run's folder; a broken campaign is named and skipped."""
        from pmg_tasks.campaigns import snapshot_campaigns

        return snapshot_campaigns(Settings(), day)

    # all_done: publish also runs when generate shards failed, to fail naming them or (publish_partial) to
    # publish the rest. `planned` is the plan's own output, so a failed plan still stops it here.
    @task(
        outlets=[CREATIVE_MANIFESTS], trigger_rule="all_done",
        execution_timeout=task_timeout(dag_parts.SETTINGS, "publish"),
    )  # fmt: skip
    def publish(day: str, planned: list[int], **context) -> dict:
        """Every campaign but those waiting for review; the report shows them all."""
        from pmg_tasks.publish import PublishError, asset_event_extra, publish_run
        from pmg_tasks.review import held_campaigns

        if planned is None:  # all_done also runs it after a stage before generation failed: nothing to publish
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(f"the plan of {day} did not finish, so there is nothing to publish")
        held = held_campaigns(Settings(), day)
        partial, failed = bool(context["params"]["publish_partial"]), _failed_shards(context, planned)
        try:
            published = publish_run(Settings(), day, held=held, partial=partial, failed_shards=failed)
        except PublishError as error:
            raise dag_parts.fail_without_retry(error) from error
        # Consumers scheduled on the Asset learn from the event itself what changed and where it is.
        context["outlet_events"][CREATIVE_MANIFESTS].extra = asset_event_extra(published)
        return {**published, "held": held}

    day = dag_parts.run_date()
    embeddings, shards = dag_parts.nightly_stages(day, campaigns(day))
    titles = dag_parts.headlines(day)
    generated = dag_parts.generate.partial(day=day).expand(shard_index=shards)
    shards >> titles
    published = dag_parts.with_report_link(publish(day, shards))
    [embeddings, titles] >> generated >> published
    dag_parts.review_gates(day, published, REVIEWED)


pmg_nightly()
