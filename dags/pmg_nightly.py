"""pmg_nightly: last night's clickstream in, personalized creatives and their scores out.

    extract -> validate -> histories -> keyword_shards -> keywords (one per user shard) -> merge_keywords
      -> preference_tokens -> token_embeddings (GPU) ------------------------------.
                           -> plan (one generation per segment x target) -> headlines -> generate (one task
                              per shard, GPU) -> publish

preference_tokens waits for the keywords: it describes each token by the keywords of the users behind it,
so a rerun must see the same keywords to write the same descriptors. token_embeddings (textual inversion of
the tokens in use) and plan run side by side; generate needs both, and the headlines.

Wiring only: every stage is a plain function in pmg_tasks, and heavy libraries load inside task bodies.
A run triggered on day D processes day D - 1, the last complete one; `params.ds` reprocesses any date.
Stages exchange files in the object store; XCom carries only dates, counts and keys.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, Param, dag, task

from pmg_tasks.settings import Settings
from pmg_tasks.watch.alerts import deadline_alert, task_timeout, watched_default_args

SETTINGS = Settings()
SCHEDULE = "0 2 * * *"
# Diffusion tasks go to the GPU queue and pool; LLM tasks follow when their backend loads a model.
GPU, LLM = SETTINGS.placement("gpu"), SETTINGS.placement("llm")
CREATIVE_MANIFESTS = Asset(name="pmg_creative_manifests")


def _fail_without_retry(error: Exception):
    """Bad data and bad campaign files do not fix themselves: fail now instead of retrying."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(str(error))


@dag(
    dag_id="pmg_nightly",
    schedule=SCHEDULE,
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["pmg", "nightly", "creatives"],
    doc_md=__doc__,
    params={"ds": Param(None, type=["null", "string"], description="YYYY-MM-DD to process instead of D-1")},
    dagrun_timeout=dt.timedelta(hours=SETTINGS.watching.dagrun_timeout_h),
    deadline=deadline_alert(SETTINGS, SCHEDULE),
    default_args={
        **watched_default_args(SETTINGS),
        "owner": "data-engineering",
        "retries": SETTINGS.retries.per_task,
        "retry_delay": dt.timedelta(seconds=SETTINGS.retries.delay_s),
        "retry_exponential_backoff": True,
    },
)
def pmg_nightly():
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

        return extract_clickstream(Settings(), day)

    @task(execution_timeout=task_timeout(SETTINGS, "validate"))
    def validate(day: str) -> dict:
        from pmg_tasks.validation.stage import BadDataError, validate_events

        try:
            return validate_events(Settings(), day)
        except BadDataError as error:
            raise _fail_without_retry(error) from error

    @task(execution_timeout=task_timeout(SETTINGS, "histories"))
    def histories(day: str) -> dict:
        from pmg_tasks.histories import build_histories

        return build_histories(Settings(), day)

    @task(execution_timeout=task_timeout(SETTINGS, "keyword_shards"))
    def keyword_shards(day: str) -> list[int]:
        from pmg_tasks.keywords.stage import plan_keyword_shards

        return plan_keyword_shards(Settings(), day)

    @task(
        pool=LLM.pool,
        queue=LLM.queue,
        max_active_tis_per_dag=LLM.slots,
        execution_timeout=task_timeout(SETTINGS, "keywords"),
        map_index_template="user shard {{ task.op_kwargs['shard_index'] }}",
    )
    def keywords(day: str, shard_index: int) -> dict:
        from pmg_tasks.campaigns import CampaignError
        from pmg_tasks.keywords.stage import extract_keyword_shard

        try:
            return extract_keyword_shard(Settings(), day, shard_index)
        except CampaignError as error:
            raise _fail_without_retry(error) from error

    @task(execution_timeout=task_timeout(SETTINGS, "merge_keywords"))
    def merge_keywords(day: str) -> dict:
        from pmg_tasks.keywords.stage import merge_keywords

        return merge_keywords(Settings(), day)

    @task(execution_timeout=task_timeout(SETTINGS, "preference_tokens"))
    def preference_tokens(day: str) -> dict:
        from pmg_tasks.preferences.stage import update_preference_tokens

        return update_preference_tokens(Settings(), day)

    @task(
        pool=GPU.pool,
        queue=GPU.queue,
        max_active_tis_per_dag=GPU.slots,
        execution_timeout=task_timeout(SETTINGS, "token_embeddings"),
    )
    def token_embeddings(day: str) -> dict:
        from pmg_tasks.tokens.stage import train_token_embeddings

        return train_token_embeddings(Settings(), day)

    @task(execution_timeout=task_timeout(SETTINGS, "plan"))
    def plan(day: str) -> list[int]:
        from pmg_tasks.campaigns import CampaignError
        from pmg_tasks.plan import plan_generation

        try:
            return plan_generation(Settings(), day)
        except CampaignError as error:
            raise _fail_without_retry(error) from error

    @task(
        pool=LLM.pool,
        queue=LLM.queue,
        max_active_tis_per_dag=LLM.slots,
        execution_timeout=task_timeout(SETTINGS, "headlines"),
    )
    def headlines(day: str) -> dict:
        from pmg_tasks.headlines import write_headlines

        return write_headlines(Settings(), day)

    @task(
        pool=GPU.pool,
        queue=GPU.queue,
        max_active_tis_per_dag=GPU.slots,
        execution_timeout=task_timeout(SETTINGS, "generate"),
        map_index_template="generation shard {{ task.op_kwargs['shard_index'] }}",
    )
    def generate(day: str, shard_index: int) -> dict:
        from pmg_tasks.generate.shard import generate_shard

        return generate_shard(Settings(), day, shard_index)

    @task(outlets=[CREATIVE_MANIFESTS], execution_timeout=task_timeout(SETTINGS, "publish"))
    def publish(day: str) -> dict:
        from pmg_tasks.publish import publish_run

        return publish_run(Settings(), day)

    day = run_date()
    extracted, validated, built = extract(day), validate(day), histories(day)
    user_shards = keyword_shards(day)
    user_keywords = keywords.partial(day=day).expand(shard_index=user_shards)
    merged, tokens, shards = merge_keywords(day), preference_tokens(day), plan(day)
    embeddings, titles = token_embeddings(day), headlines(day)
    generated = generate.partial(day=day).expand(shard_index=shards)
    published = publish(day)

    extracted >> validated >> built >> user_shards
    user_keywords >> merged >> tokens >> [embeddings, shards]
    shards >> titles
    [embeddings, titles] >> generated >> published


pmg_nightly()
