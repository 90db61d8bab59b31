"""extraction_window: the half-open, day-aligned window of a run."""

from __future__ import annotations

from datetime import datetime

import pytest

from pmg_tasks.extraction_window import extraction_window


def test_lookback_one_is_the_day_itself():
    assert extraction_window("2026-11-20", 1) == (datetime(2026, 11, 20), datetime(2026, 11, 21))


def test_lookback_three_ends_at_the_same_midnight():
    assert extraction_window("2026-11-20", 3) == (datetime(2026, 11, 18), datetime(2026, 11, 21))


def test_window_crosses_month_and_year_ends():
    assert extraction_window("2026-01-01", 3) == (datetime(2025, 12, 30), datetime(2026, 1, 2))
    assert extraction_window("2028-02-28", 1) == (datetime(2028, 2, 28), datetime(2028, 2, 29))


def test_window_is_naive():
    start, end = extraction_window("2026-11-20", 2)
    assert start.tzinfo is None and end.tzinfo is None


@pytest.mark.parametrize(
    "ds", ["2026-11-5", "20261120", "2026/11/20", "2026-11-20T00:00", " 2026-11-20", "", "yesterday"]
)
def test_malformed_ds_is_a_clear_error(ds):
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        extraction_window(ds, 1)


@pytest.mark.parametrize("ds", ["2026-13-01", "2026-02-30", "2026-00-10"])
def test_impossible_date_is_a_clear_error(ds):
    with pytest.raises(ValueError, match="not a calendar date"):
        extraction_window(ds, 1)


def test_non_string_ds_is_a_clear_error():
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        extraction_window(datetime(2026, 11, 20), 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("lookback", [0, -1, 1.5, True])
def test_lookback_must_be_a_positive_whole_number(lookback):
    with pytest.raises(ValueError, match="lookback_days"):
        extraction_window("2026-11-20", lookback)
