"""The extraction window of a run: which event timestamps belong to the run of date `ds`.

Defined from the run date alone (never from Airflow's data interval: cron runs have
data_interval_start == data_interval_end, and asset-triggered runs have none), so a rerun of the same
date covers the same rows.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta

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


# An event dated later than this after the current time is a clock that is off, not a late night's event.
FUTURE_SLACK = timedelta(days=1)


def plausible_span(floor: date, now: datetime) -> tuple[datetime, datetime]:
    """`[floor at 00:00, now + 1 day]`, naive UTC: where any run's window can lie. An event outside it (a
    zero timestamp from 1970, a clock set to 2999) is in no window."""
    if now.tzinfo is not None:
        now = now.astimezone(UTC).replace(tzinfo=None)
    return datetime.combine(floor, time()), now + FUTURE_SLACK
