"""The Airflow tasks of pmg's stages, shared by the DAG files (dags/pmg_nightly.py, dags/pmg_campaign_run.py).

Each task is a thin wrapper over a stage function; heavy libraries load inside task bodies, so parsing a DAG
file imports Airflow and pydantic only. `nightly_stages` wires extract .. plan, the part every run shares.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, task
from airflow.sdk.bases.operatorlink import BaseOperatorLink

from pmg_tasks.settings import Settings
from pmg_tasks.stage_times import stage_clock
from pmg_tasks.watch.alerts import task_timeout, watched_default_args

SETTINGS = Settings()
# Diffusion tasks go to the GPU queue and pool; LLM tasks follow when their backend loads a model.
GPU, LLM = SETTINGS.placement("gpu"), SETTINGS.placement("llm")
CREATIVE_MANIFESTS = Asset(name="pmg_creative_manifests")


def fail_without_retry(error: Exception):
    """Bad data and bad campaign files do not fix themselves: fail now instead of retrying."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(str(error))


def default_args(owner: str) -> dict:
    return {
        **watched_default_args(SETTINGS),
        "owner": owner,
        "retries": SETTINGS.retries.per_task,
        "retry_delay": dt.timedelta(seconds=SETTINGS.retries.delay_s),
        "retry_exponential_backoff": True,
    }


@task(execution_timeout=task_timeout(SETTINGS, "run_date"))
def run_date(**context) -> str:
    """The date this run processes: params.ds, else the day before the run's logical date."""
    if context["params"].get("ds"):
        return dt.date.fromisoformat(context["params"]["ds"]).isoformat()
    dag_run = context["dag_run"]
    # Asset-triggered and manual runs may have no logical date; run_after always exists.
    moment = dag_run.logical_date or dag_run.run_after
    return (moment.date() - dt.timedelta(days=1)).isoformat()


@task(execution_timeout=task_timeout(SETTINGS, "extract"))
def extract(day: str) -> dict:
    from pmg_tasks.extract import extract_clickstream

    with stage_clock(Settings(), day, "extract"):
        return extract_clickstream(Settings(), day)


@task(execution_timeout=task_timeout(SETTINGS, "validate"))
def validate(day: str) -> dict:
    from pmg_tasks.validation.stage import BadDataError, validate_events

    try:
        with stage_clock(Settings(), day, "validate"):
            return validate_events(Settings(), day)
    except BadDataError as error:
        raise fail_without_retry(error) from error


@task(execution_timeout=task_timeout(SETTINGS, "histories"))
def histories(day: str) -> dict:
    from pmg_tasks.histories import build_histories

    with stage_clock(Settings(), day, "histories"):
        return build_histories(Settings(), day)


@task(execution_timeout=task_timeout(SETTINGS, "keyword_shards"))
def keyword_shards(day: str) -> list[int]:
    from pmg_tasks.keywords.stage import plan_keyword_shards

    return plan_keyword_shards(Settings(), day)


@task(
    pool=LLM.pool, pool_slots=LLM.pool_slots, queue=LLM.queue, max_active_tis_per_dag=LLM.slots,
    execution_timeout=task_timeout(SETTINGS, "keywords"),
    map_index_template="user shard {{ task.op_kwargs['shard_index'] }}",
)
def keywords(day: str, shard_index: int) -> dict:
    from pmg_tasks.campaigns import CampaignError
    from pmg_tasks.keywords.stage import extract_keyword_shard

    try:
        with stage_clock(Settings(), day, "keywords", shard_index):
            return extract_keyword_shard(Settings(), day, shard_index)
    except CampaignError as error:
        raise fail_without_retry(error) from error


@task(execution_timeout=task_timeout(SETTINGS, "merge_keywords"))
def merge_keywords(day: str) -> dict:
    from pmg_tasks.keywords.stage import merge_keywords

    with stage_clock(Settings(), day, "merge_keywords"):
        return merge_keywords(Settings(), day)


@task(execution_timeout=task_timeout(SETTINGS, "preference_tokens"))
def preference_tokens(day: str) -> dict:
    from pmg_tasks.preferences.stage import update_preference_tokens

    with stage_clock(Settings(), day, "preference_tokens"):
        return update_preference_tokens(Settings(), day)


@task(
    pool=GPU.pool, queue=GPU.queue, max_active_tis_per_dag=GPU.slots,
    execution_timeout=task_timeout(SETTINGS, "token_embeddings"),
)
def token_embeddings(day: str) -> dict:
    from pmg_tasks.tokens.stage import train_token_embeddings

    with stage_clock(Settings(), day, "token_embeddings"):
        return train_token_embeddings(Settings(), day)


@task(execution_timeout=task_timeout(SETTINGS, "plan"))
def plan(day: str) -> list[int]:
    from pmg_tasks.plan import plan_generation

    # A campaign that cannot be planned is skipped and named by the stage; nothing here is worth a retry.
    with stage_clock(Settings(), day, "plan"):
        return plan_generation(Settings(), day)


@task(
    pool=LLM.pool, pool_slots=LLM.pool_slots, queue=LLM.queue, max_active_tis_per_dag=LLM.slots,
    execution_timeout=task_timeout(SETTINGS, "headlines"),
)
def headlines(day: str) -> dict:
    from pmg_tasks.headlines import write_headlines

    with stage_clock(Settings(), day, "headlines"):
        return write_headlines(Settings(), day)


@task(
    pool=GPU.pool, queue=GPU.queue, max_active_tis_per_dag=GPU.slots, execution_timeout=task_timeout(SETTINGS, "generate"),
    map_index_template="generation shard {{ task.op_kwargs['shard_index'] }}",
)
def generate(day: str, shard_index: int) -> dict:
    from pmg_tasks.generate.shard import generate_shard

    with stage_clock(Settings(), day, "generate", shard_index):
        return generate_shard(Settings(), day, shard_index)


def nightly_stages(day, in_force):
    """Wire the stages from extract to plan after `in_force` (the campaigns task); returns (token
    embeddings, plan) so the caller wires generation after both."""
    extracted, validated, built = extract(day), validate(day), histories(day)
    user_shards = keyword_shards(day)
    user_keywords = keywords.partial(day=day).expand(shard_index=user_shards)
    merged, tokens, shards = merge_keywords(day), preference_tokens(day), plan(day)
    embeddings = token_embeddings(day)

    in_force >> extracted >> validated >> built >> user_shards
    user_keywords >> merged >> tokens >> [embeddings, shards]
    return embeddings, shards


def report_url(ds: str, campaign_id: str = "") -> str:
    """The run report through the gallery in the Airflow UI (api.base_url, else a path on the same host)."""
    from airflow.configuration import conf

    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    anchor = f"#campaign-{campaign_id}" if campaign_id else ""
    return f"{base}/pmg/store/reports/ds={ds}/index.html{anchor}"


class RunReportLink(BaseOperatorLink):
    """"Run report" on a publish task: the page of the date it published (from the task's result)."""

    name = "Run report"

    def get_link(self, operator, *, ti_key) -> str:
        from airflow.sdk.bases.xcom import BaseXCom

        result = BaseXCom.get_value(ti_key=ti_key, key="return_value") or {}
        return report_url(result["ds"]) if result.get("ds") else ""


def with_report_link(published):
    """Give the publish task (an XComArg of a @task) its "Run report" link; returns it."""
    published.operator.operator_extra_links = (RunReportLink(),)
    return published


def review_campaign_ids() -> list[str]:
    """The valid campaigns that require a review, read when the DAG file is parsed: each gets a gate."""
    from pmg_tasks.campaigns import read_campaigns

    settings = Settings()
    found = read_campaigns(settings.campaigns_file, settings.campaign_limits)
    return sorted(c.campaign_id for c in found.campaigns if c.review == "required")


def review_gates(day, published, campaign_ids) -> None:
    """After `published` (the campaigns that need no review, and the report with every campaign on it): per
    campaign that requires review, a human-in-the-loop task with a link to its section of the report, then
    its publication or the record of its rejection. A campaign not held tonight skips its gate."""
    from airflow.providers.standard.operators.hitl import HITLOperator
    from airflow.sdk import Param

    for campaign_id in campaign_ids:
        name = campaign_id.replace("-", "_")

        @task.short_circuit(task_id=f"held_{name}")
        def is_held(day: str, held_ids: list[str], campaign_id: str = campaign_id) -> bool:
            return campaign_id in held_ids

        @task(task_id=f"decide_{name}")
        def decide(day: str, response: dict, campaign_id: str = campaign_id) -> dict:
            from pmg_tasks.review import record_decision

            return record_decision(Settings(), day, campaign_id, response)

        link = report_url("{{ ti.xcom_pull(task_ids='run_date') }}", campaign_id)
        review = HITLOperator(
            task_id=f"review_{name}",
            subject=f"Review the creatives of campaign {campaign_id}",
            body=f"Tonight's creatives of **{campaign_id}** wait for you before they are published.\n\n"
                 f"[Open the campaign in the run report]({link})\n\nApprove publishes them; Reject keeps them "
                 "back (say why in the comment: it is recorded and shown on the report).",
            options=["Approve", "Reject"],
            params={"comment": Param("", type="string", title="Comment")},
            execution_timeout=None,
            retries=0,
        )  # fmt: skip
        gate = is_held(day, published["held"])
        gate >> review
        decide(day, review.output)
