"""Each stage's wall time in a run, for the report: recorded by the task that ran it, one small file a task.

A mapped stage (keywords, generate) records one file per task; the report shows their sum and the longest.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pmg_tasks.layout import run_key
from pmg_tasks.store import ObjectStore, read_json, write_json

if TYPE_CHECKING:
    from pmg_tasks.settings import Settings

PREFIX = "stats/wall/"
PART = re.compile(r"^(?P<stage>[a-z_]+)(?:-(?P<part>\d{5}))?\.json$")


def wall_time_key(ds: str, stage: str, part: int | None = None) -> str:
    return run_key(ds, f"{PREFIX}{stage}" + (f"-{part:05d}" if part is not None else "") + ".json")


@contextlib.contextmanager
def stage_clock(settings: Settings, ds: str, stage: str, part: int | None = None) -> Iterator[None]:
    """Time the block and record it as `stage` (part `part` of a mapped stage) of run `ds`, when it ends
    without an error: a failed attempt's time is in the task's log, not the report."""
    from pmg_tasks.store import open_store

    started = time.monotonic()
    yield
    write_json(open_store(settings), wall_time_key(ds, stage, part), {"seconds": round(time.monotonic() - started, 3)})


def wall_times(store: ObjectStore, ds: str) -> dict[str, dict[str, float]]:
    """Stage -> seconds (summed over its tasks), tasks, and the longest task, in the order they were run."""
    found: dict[str, dict[str, float]] = {}
    for key in store.list_keys(run_key(ds, PREFIX)):
        match = PART.match(key.rsplit("/", 1)[-1])
        if not match:
            continue
        seconds = float(read_json(store, key)["seconds"])
        entry = found.setdefault(match["stage"], {"seconds": 0.0, "tasks": 0, "longest": 0.0})
        entry["seconds"] += seconds
        entry["tasks"] += 1
        entry["longest"] = max(entry["longest"], seconds)
    return found
