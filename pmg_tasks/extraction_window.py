"""The extraction window of a run: which event timestamps belong to the run of date `ds`.

Defined from the run date alone (never from Airflow's data interval: cron runs have
data_interval_start == data_interval_end, and asset-triggered runs have none), so a rerun of the same
date covers the same rows.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta

_DS_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")


def extraction_window(ds: str, lookback_days: int) -> tuple[datetime, datetime]:
    """The half-open window [ds - (lookback_days - 1) days at 00:00, ds + 1 day at 00:00).

    Both ends are naive datetimes in UTC. lookback_days=1 is the day `ds` itself.
    """
    if not isinstance(ds, str) or not _DS_PATTERN.fullmatch(ds):
        raise ValueError(f"ds must be a date written YYYY-MM-DD (e.g. 2026-11-20), got {ds!r}")
    try:
        day = date.fromisoformat(ds)
    except ValueError as error:
        raise ValueError(f"ds {ds!r} is not a calendar date: {error}") from None
    if isinstance(lookback_days, bool) or not isinstance(lookback_days, int) or lookback_days < 1:
        raise ValueError(f"lookback_days must be a whole number of days >= 1, got {lookback_days!r}")
    end = datetime.combine(day + timedelta(days=1), time())
    return end - timedelta(days=lookback_days), end
