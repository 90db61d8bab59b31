"""The Great Expectations suite over a run's events, and its run in an ephemeral context.

The suite mirrors the row rules that GX can express. It is a second opinion and a report, kept with the
run in validation.json; what quarantines rows and stops the run are the row rules (rules.py), which see
the whole file and the item catalog. Differences worth knowing when reading the two side by side:

- GX counts every copy of a duplicated event_id as unexpected; the rules keep the first copy.
- GX's pandas engine treats NaN as missing, so a NaN dwell is not unexpected for GX (rule
  dwell_not_a_number catches it).
- event_ts is checked through the column's min and max (per-row datetime comparison in GX's pandas engine
  is a Python loop: ~4.5 s per million rows), so those two report an observed value, not a count.
- Catalog membership and "not in the future" are left to the rules.

GX is imported inside `run_suite` (about 3 s), with its progress bars and chatty loggers turned off.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pmg_tasks.validation.rules import (
    CONTROL_CHARS_PY,
    EVENT_TYPES,
    ID_COLUMNS,
    KEY_COLUMNS,
    MAX_DWELL_SECONDS,
    MAX_ID_LENGTH,
    format_chars_py,
)
from pmg_tasks.warehouse import EVENT_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

SUITE_NAME = "pmg_events"
# Above settings.gx_max_rows events GX runs on a systematic sample (every k-th row in file order) of at
# most that many rows: GX's pandas engine holds the frame in memory, ~0.5 s per expectation per million rows.
_REQUIRED_IDS = ("event_id", "user_id", "item_id")


def build_expectations(window_start: datetime, window_end: datetime) -> list[Any]:
    """The expectations of the events suite, in report order."""
    import great_expectations as gx

    E = gx.expectations
    # Control or invisible format characters, as rules id_control_characters and id_format_characters.
    suspect_chars = f"(?:{CONTROL_CHARS_PY}|{format_chars_py()})"
    expectations: list[Any] = [E.ExpectColumnToExist(column=c) for c in EVENT_COLUMNS]
    expectations += [E.ExpectColumnValuesToNotBeNull(column=c) for c in KEY_COLUMNS]
    expectations.append(E.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(EVENT_TYPES)))
    expectations.append(
        E.ExpectColumnValuesToBeBetween(column="dwell_seconds", min_value=0, max_value=MAX_DWELL_SECONDS)
    )
    expectations.append(E.ExpectColumnMinToBeBetween(column="event_ts", min_value=window_start))
    expectations.append(
        E.ExpectColumnMaxToBeBetween(column="event_ts", max_value=window_end, strict_max=True)
    )
    expectations.append(E.ExpectColumnValuesToBeUnique(column="event_id"))
    expectations += [
        E.ExpectColumnValueLengthsToBeBetween(
            column=c, min_value=1 if c in _REQUIRED_IDS else None, max_value=MAX_ID_LENGTH
        )
        for c in ID_COLUMNS
    ]
    expectations += [E.ExpectColumnValuesToNotMatchRegex(column=c, regex=suspect_chars) for c in ID_COLUMNS]
    return expectations


def quiet_gx() -> None:
    """Keep GX out of task logs unless something is wrong.

    Called before and after importing GX: some of its modules set their own logger to INFO at import
    (e.g. one announces the temporary docs folder of every ephemeral context).
    """
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("great_expectations.") and isinstance(logger, logging.Logger):
            if logger.level != logging.NOTSET and logger.level < logging.WARNING:
                logger.setLevel(logging.WARNING)


def run_suite(frame: pd.DataFrame, *, window_start: datetime, window_end: datetime, scope: dict) -> dict:
    """Run the suite over `frame` (SUMMARY result format) and return the JSON-ready part of the report.

    `scope` says what `frame` is (all rows or a sample) and is kept in the report as is.
    """
    quiet_gx()
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    quiet_gx()
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch_definition = (
        context.data_sources.add_pandas("pmg_events")
        .add_dataframe_asset("events")
        .add_batch_definition_whole_dataframe("whole_events")
    )
    expectations = build_expectations(window_start, window_end)
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    for expectation in expectations:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{SUITE_NAME}_validation", data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{SUITE_NAME}_checkpoint", validation_definitions=[definition], result_format="SUMMARY"
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})

    results: list[dict] = []
    statistics: dict = {}
    for suite_result in outcome.run_results.values():
        statistics = {k: _plain(v) for k, v in sorted(suite_result.statistics.items())}
        results.extend(_result_row(r) for r in suite_result.results)
    # GX reports grouped by column; keep the suite's own order so the report reads (and diffs) stably.
    order = {(type(e).__name__, getattr(e, "column", None)): i for i, e in enumerate(expectations)}
    results.sort(key=lambda r: order.get((r["class"], r["column"]), len(order)))
    for row in results:
        del row["class"]
    return {
        "success": bool(outcome.success),
        "suite": SUITE_NAME,
        "result_format": "SUMMARY",
        "scope": scope,
        "statistics": statistics,
        "results": results,
    }


def _result_row(result: Any) -> dict:
    config = result.expectation_config
    body = result.result or {}
    row = {
        "class": _class_name(config.type),
        "expectation_type": config.type,
        "column": config.kwargs.get("column"),
        "success": bool(result.success),
        "unexpected_count": _plain(body.get("unexpected_count")),
    }
    if "observed_value" in body:
        row["observed_value"] = _plain(body["observed_value"])
    info = result.exception_info or {}
    if info.get("raised_exception"):
        row["exception"] = str(info.get("exception_message"))
    return row


def _class_name(expectation_type: str) -> str:
    return "".join(part.capitalize() for part in expectation_type.split("_"))


def _plain(value: Any) -> Any:
    """A JSON-native, run-independent form of a GX value (numpy numbers, timestamps)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        return value
    if hasattr(value, "item") and not hasattr(value, "isoformat"):
        return _plain(value.item())
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
