"""Deadline, timeouts and notifications of pmg_nightly, built from `settings.watching`.

Every alert goes through one Airflow notifier class named in the settings: the default, `LogNotifier`,
writes one structured line to the log of whatever runs it (the task, or the triggerer for a missed
deadline); SMTP, Slack or any provider's notifier is a setting, not code (docs/operations.md).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier

if TYPE_CHECKING:
    from pmg_tasks.settings import Settings

log = logging.getLogger("pmg.alerts")

ALERT_PREFIX = "PMG_ALERT "


class LogNotifier(BaseNotifier):
    """Writes `PMG_ALERT {json}` to the log: the event, the DAG, task, try and the error, one line that a
    log search or a log-based alert rule finds."""

    def __init__(self, event: str = "alert", context: Any = None, **extra: Any):
        super().__init__(context=context)
        self.event = event
        self.extra = extra

    def notify(self, context) -> None:
        log.error("%s%s", ALERT_PREFIX, json.dumps(alert_record(self.event, context, self.extra), sort_keys=True))

    async def async_notify(self, context) -> None:
        # A missed deadline runs in the triggerer, which passes only a small context.
        self.notify(context)


def alert_record(event: str, context, extra: dict | None = None) -> dict:
    """What one alert says, from an Airflow context (a task's, or the triggerer's deadline context)."""
    from pmg_tasks.watch.run_settings import mask_secrets

    context = context or {}
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    # The triggerer's deadline context is JSON: the run as the REST API shows it (its id is `dag_run_id`).
    if isinstance(dag_run, dict):
        run = {"run_id": dag_run.get("dag_run_id") or dag_run.get("run_id"), "dag_id": dag_run.get("dag_id")}
    else:
        run = {"run_id": getattr(dag_run, "run_id", None), "dag_id": getattr(dag_run, "dag_id", None)}
    record = {"event": event, "dag_id": getattr(context.get("dag"), "dag_id", None) or getattr(ti, "dag_id", None)
              or run.get("dag_id")}  # fmt: skip
    if ti is not None:
        record.update(task_id=ti.task_id, map_index=getattr(ti, "map_index", -1), try_number=ti.try_number,
                      run_id=ti.run_id)  # fmt: skip
    elif dag_run is not None:
        record["run_id"] = run.get("run_id")
    error = context.get("exception")
    if error is not None:
        record["error"] = mask_secrets(f"{type(error).__name__}: {error}")[:2000]
    deadline = context.get("deadline")
    if deadline is not None:
        record["deadline"] = str(deadline.get("deadline_time") if isinstance(deadline, dict) else deadline)
    record.update(extra or {})
    return record


def notifier(settings: Settings, event: str) -> BaseNotifier:
    """The configured notifier for `event` (task_failed, task_retry)."""
    import importlib

    module, _, name = settings.watching.notifier.rpartition(".")
    return getattr(importlib.import_module(module), name)(**notifier_kwargs(settings, event))


def notifier_kwargs(settings: Settings, event: str) -> dict[str, Any]:
    """The configured notifier's arguments; the default one is also told which event it reports."""
    kwargs: dict[str, Any] = dict(settings.watching.notifier_kwargs)
    if settings.watching.notifier == f"{__name__}.{LogNotifier.__name__}":
        kwargs["event"] = event
    return kwargs


def task_timeout(settings: Settings, task_id: str) -> dt.timedelta:
    """How long task `task_id` may run (`watching.task_timeouts_min`)."""
    minutes = settings.watching.task_timeouts_min.get(task_id, settings.watching.default_task_timeout_min)
    return dt.timedelta(minutes=minutes)


def finish_within(settings: Settings) -> dt.timedelta | None:
    """How long a run may take from when it is queued: `watching.finish_within_min`, else from the cron
    schedule's start time to `watching.finish_by_utc` (the next day when earlier); None for a night that
    only runs when triggered and names no time (nothing to measure from)."""
    watching = settings.watching
    if watching.finish_within_min:
        return dt.timedelta(minutes=watching.finish_within_min)
    if not watching.schedule:
        return None
    minute, hour = watching.schedule.split()[:2]
    if not (minute.isdigit() and hour.isdigit()):
        raise ValueError(
            f"watching.schedule {watching.schedule!r} does not start at one fixed time, so there is no finish time to "
            "measure to: set PMG_WATCHING__FINISH_WITHIN_MIN (minutes from queueing) or a schedule like '0 2 * * *'"
        )
    hours, minutes = (int(part) for part in watching.finish_by_utc.split(":"))
    start, finish = dt.timedelta(hours=int(hour), minutes=int(minute)), dt.timedelta(hours=hours, minutes=minutes)
    return finish - start if finish > start else finish - start + dt.timedelta(days=1)


def deadline_alert(settings: Settings) -> list:
    """The DeadlineAlert (an experimental Airflow feature) that fires when a run has not finished in time
    (`finish_within`): measured from when the run was queued, so a scheduled 02:00 run must end by
    `watching.finish_by_utc`, and a rerun of an old date gets the same time to finish instead of alerting at
    once. The scheduler notices the miss; the triggerer runs the notifier. Empty when `watching.deadline` is
    off or there is no time to measure."""
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    if not settings.watching.deadline:
        return []
    interval = finish_within(settings)
    if interval is None:
        return []

    return [DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=interval,
        callback=AsyncCallback(settings.watching.notifier, kwargs=notifier_kwargs(settings, "deadline_missed")),
        name="pmg_nightly finish time",
    )]


def watched_default_args(settings: Settings) -> dict[str, Any]:
    """default_args every task of the nightly DAG gets: failure and retry notifications, the check that
    the worker runs the run's settings, and the stage metrics after success."""
    from pmg_tasks.watch.hooks import after_task, before_task

    return {
        "on_failure_callback": [notifier(settings, "task_failed")],
        "on_retry_callback": [notifier(settings, "task_retry")],
        "pre_execute": before_task,
        "post_execute": after_task,
        "execution_timeout": dt.timedelta(minutes=settings.watching.default_task_timeout_min),
    }
