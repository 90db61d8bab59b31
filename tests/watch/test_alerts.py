"""The nightly DAG is watched: a deadline, a run timeout, a timeout per stage, notifications on failure and
retry through the configured notifier, and shard names in the UI."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest

from pmg_tasks.airflow_run import DAGS_FOLDER
from pmg_tasks.settings import STAGE_TIMEOUTS_MIN, Settings
from pmg_tasks.watch.alerts import ALERT_PREFIX, LogNotifier, finish_within, notifier


@pytest.fixture(scope="module")
def nightly():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER)).dags["pmg_nightly"]


def test_the_run_has_a_deadline_at_its_finish_time_and_a_timeout(nightly):
    settings = Settings()
    (alert,) = nightly.deadline
    assert alert.interval == finish_within(settings) == dt.timedelta(hours=5)
    assert alert.callback.path == settings.watching.notifier
    assert alert.callback.kwargs["event"] == "deadline_missed"
    assert nightly.dagrun_timeout == dt.timedelta(hours=settings.watching.dagrun_timeout_h)


def test_every_stage_has_its_own_timeout_and_both_callbacks(nightly):
    for task in nightly.tasks:
        assert task.execution_timeout == dt.timedelta(minutes=STAGE_TIMEOUTS_MIN[task.task_id]), task.task_id
        assert [type(c) for c in task.on_failure_callback] == [LogNotifier], task.task_id
        assert [type(c) for c in task.on_retry_callback] == [LogNotifier], task.task_id
    assert len({t.execution_timeout for t in nightly.tasks}) > 3


def test_mapped_tasks_name_their_shards(nightly):
    assert "shard_index" in nightly.get_task("generate").map_index_template
    assert "shard_index" in nightly.get_task("keywords").map_index_template


def test_finish_time_past_midnight_and_before_the_start():
    settings = Settings(watching={"finish_by_utc": "01:30"})
    assert finish_within(settings) == dt.timedelta(hours=23, minutes=30)
    later = Settings(watching={"finish_by_utc": "06:15", "schedule": "30 2 * * *"})
    assert finish_within(later) == dt.timedelta(hours=3, minutes=45)


def test_a_triggered_only_night_has_no_schedule_and_a_deadline_only_when_given_one(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("PMG_WATCHING__SCHEDULE", "")
    assert finish_within(Settings()) is None
    monkeypatch.setenv("PMG_WATCHING__FINISH_WITHIN_MIN", "3")
    assert finish_within(Settings()) == dt.timedelta(minutes=3)
    dag = DagBag(dag_folder=str(DAGS_FOLDER / "pmg_nightly.py")).dags["pmg_nightly"]
    assert type(dag.timetable).__name__ == "NullTimetable"
    assert [alert.interval for alert in dag.deadline] == [dt.timedelta(minutes=3)]


def test_a_schedule_without_one_start_time_asks_for_minutes():
    with pytest.raises(ValueError, match="PMG_WATCHING__FINISH_WITHIN_MIN"):
        finish_within(Settings(watching={"schedule": "*/30 * * * *"}))
    assert finish_within(Settings(watching={"schedule": "*/30 * * * *", "finish_within_min": 20})) == dt.timedelta(minutes=20)


def test_log_notifier_writes_one_structured_line_without_secrets(caplog):
    class TI:
        dag_id, task_id, map_index, try_number, run_id = "pmg_nightly", "extract", -1, 2, "manual__x"

    error = RuntimeError("could not connect to postgresql://pmg:hunter2@db:5432/shop")
    with caplog.at_level(logging.ERROR, logger="pmg.alerts"):
        notifier(Settings(), "task_failed")({"ti": TI(), "exception": error})
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(ALERT_PREFIX)]
    record = json.loads(line.removeprefix(ALERT_PREFIX))
    assert record["event"] == "task_failed" and record["task_id"] == "extract" and record["try_number"] == 2
    assert "hunter2" not in line and "postgresql://pmg:***@db" in record["error"]


def test_a_missed_deadline_names_its_run_from_the_triggerers_json_context(caplog):
    # What the scheduler hands the triggerer (airflow.models.deadline.Deadline.handle_miss): JSON only.
    context = {"dag_run": {"dag_id": "pmg_nightly", "dag_run_id": "scheduled__2026-11-21T02:00:00+00:00", "state": "running"},
               "deadline": {"id": "0193", "deadline_time": "2026-11-21T07:00:00+00:00"}}  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="pmg.alerts"):
        LogNotifier("deadline_missed").notify(context)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(ALERT_PREFIX)]
    record = json.loads(line.removeprefix(ALERT_PREFIX))
    assert record == {"event": "deadline_missed", "dag_id": "pmg_nightly", "deadline": "2026-11-21T07:00:00+00:00",
                      "run_id": "scheduled__2026-11-21T02:00:00+00:00"}  # fmt: skip


def test_another_notifier_is_configuration(monkeypatch):
    monkeypatch.setenv("PMG_WATCHING__NOTIFIER", "airflow.providers.smtp.notifications.smtp.SmtpNotifier")
    monkeypatch.setenv("PMG_WATCHING__NOTIFIER_KWARGS", '{"to": "oncall@example.com", "from_email": "pmg@example.com"}')
    chosen = notifier(Settings(), "task_failed")
    assert type(chosen).__name__ == "SmtpNotifier" and chosen.to == "oncall@example.com"
