"""What runs around every task of pmg_nightly (its default_args): before, the check that this worker runs
the run's settings; after, the run's settings (first task) and the task's stage metrics."""

from __future__ import annotations

from typing import Any

FIRST_TASK = "run_date"


def _run_date(context) -> str:
    return context["ti"].xcom_pull(task_ids=FIRST_TASK)


def before_task(context) -> None:
    """Fails the task, without retrying, when this worker's settings differ from the run's."""
    from airflow.sdk.exceptions import AirflowFailException

    from pmg_tasks.settings import Settings
    from pmg_tasks.store import open_store
    from pmg_tasks.watch.run_settings import SettingsMismatch, check_run_settings

    if context["ti"].task_id == FIRST_TASK:
        return
    settings = Settings()
    try:
        check_run_settings(open_store(settings), settings, _run_date(context))
    except SettingsMismatch as error:
        # Another attempt on the same worker would meet the same settings.
        raise AirflowFailException(str(error)) from error


def after_task(context, result: Any) -> None:
    """Records the run's settings (first task) and the task's stage metrics."""
    from pmg_tasks.settings import Settings
    from pmg_tasks.store import open_store
    from pmg_tasks.watch.metrics import record_stage_metrics
    from pmg_tasks.watch.run_settings import write_run_settings

    ti = context["ti"]
    settings = Settings()
    store = open_store(settings)
    ds = result if ti.task_id == FIRST_TASK else _run_date(context)
    if ti.task_id == FIRST_TASK:
        write_run_settings(store, settings, ds)
    record_stage_metrics(store, ds, ti.task_id, ti.map_index, ti.try_number, result)
