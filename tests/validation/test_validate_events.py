"""validate_events over real files: real DuckDB, real Great Expectations, a LocalStore in tmp_path."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from validation_data import DS, NOW, WINDOW_END, WINDOW_START, event, items_table, valid_events

from pmg_tasks.layout import run_key
from pmg_tasks.store import read_json, read_table
from pmg_tasks.validation import RULE_NAMES, BadDataError, validate_events
from pmg_tasks.warehouse import EVENT_COLUMNS, events_schema

VALID_KEY = run_key(DS, "events_valid.parquet")
QUARANTINE_KEY = run_key(DS, "quarantine.parquet")
REPORT_KEY = run_key(DS, "validation.json")


def broken_events() -> list[tuple[str, dict, str]]:
    """(tag, event, expected rule): each event breaks one rule (the last breaks two; the first wins).

    The tag sits in session_id, or in event_id where session_id is the broken field.
    """
    cases = [
        ("null-event-id", {"event_id": None}, "null_event_id"),
        ("null-user", {"user_id": None}, "null_user_id"),
        ("null-item", {"item_id": None}, "null_item_id"),
        ("null-type", {"event_type": None}, "null_event_type"),
        ("null-ts", {"event_ts": None}, "null_event_ts"),
        ("empty-item", {"item_id": ""}, "empty_id"),
        ("blank-user", {"user_id": "   "}, "empty_id"),
        ("long-user", {"user_id": "u" * 129}, "id_too_long"),
        ("newline-event-id", {"event_id": "ev-bad\n1"}, "id_control_characters"),
        # NUL in an item id: also not in the catalog, but the control character is found first.
        ("nul-item", {"item_id": "item-1\x00"}, "id_control_characters"),
        ("c1-user", {"user_id": "user-\u0085"}, "id_control_characters"),
        ("tab-event-id", {"event_id": "ev-\tx"}, "id_control_characters"),
        ("nan-user", {"user_id": "NaN"}, "null_like_id"),
        ("null-item-text", {"item_id": "null"}, "null_like_id"),
        ("padded-none-user", {"user_id": "  None "}, "null_like_id"),
        ("na-event-id", {"event_id": "N/A"}, "null_like_id"),
        ("bidi-user", {"user_id": "user-\u202e1"}, "id_format_characters"),
        ("zero-width-item", {"item_id": "item-1\u200b"}, "id_format_characters"),
        ("bom-event-id", {"event_id": "\ufeffev-x"}, "id_format_characters"),
        ("upper-type", {"event_type": "VIEW"}, "unknown_event_type"),
        ("spaced-type", {"event_type": "purchase "}, "unknown_event_type"),
        ("before-window", {"event_ts": WINDOW_START - timedelta(microseconds=1)}, "event_ts_before_window"),
        ("at-window-end", {"event_ts": WINDOW_END}, "event_ts_after_window"),
        ("far-after-window", {"event_ts": WINDOW_END + timedelta(days=40)}, "event_ts_after_window"),
        ("future", {"event_ts": NOW + timedelta(minutes=30)}, "event_ts_in_future"),
        ("nan-dwell", {"dwell_seconds": math.nan}, "dwell_not_a_number"),
        ("negative-dwell", {"dwell_seconds": -0.5}, "dwell_out_of_range"),
        ("huge-dwell", {"dwell_seconds": 86_400.001}, "dwell_out_of_range"),
        ("infinite-dwell", {"dwell_seconds": math.inf}, "dwell_out_of_range"),
        ("unknown-item", {"item_id": "item-999"}, "item_not_in_catalog"),
        ("two-faults", {"user_id": None, "event_type": "bogus"}, "null_user_id"),
    ]
    rows = []
    for n, (tag, overrides, rule) in enumerate(cases):
        rows.append((f"tag-{tag}", event(10_000 + n, session_id=f"tag-{tag}", **overrides), rule))
    # session_id itself broken: tag by event_id.
    rows.append(
        ("ev-long-session", event(20_000, event_id="ev-long-session", session_id="s" * 129), "id_too_long")
    )
    rows.append(
        (
            "ev-ctrl-session",
            event(20_001, event_id="ev-ctrl-session", session_id="s\x1bx"),
            "id_control_characters",
        )
    )
    return rows


def tag_of(row: dict) -> str:
    session = row["session_id"] or ""
    return session if session.startswith("tag-") else row["event_id"]


@pytest.fixture
def corpus():
    """80 valid events, boundary cases that are valid, duplicates, and the broken events, shuffled."""
    valid = valid_events(80)
    boundary = [
        event(100, event_id="ok-128", user_id="u" * 128),
        event(101, event_id="ok-dwell-0", dwell_seconds=0.0),
        event(102, event_id="ok-dwell-max", dwell_seconds=86_400.0),
        event(103, event_id="ok-window-start", event_ts=WINDOW_START),
        event(104, event_id="ok-at-now", event_ts=NOW),
        event(105, event_id="ok-unicode", user_id="用户-ü", session_id=None, dwell_seconds=None),
    ]
    original = valid[5]
    duplicates = [
        # A later copy of valid event 5 with a later timestamp: the copy is the duplicate.
        (
            dict(original, event_ts=original["event_ts"] + timedelta(hours=1), session_id="tag-dup-later"),
            "duplicate_event_id",
        ),
        # An exact copy of valid event 7 (a retried delivery): one of the two is kept.
        (dict(valid[7]), "exact_duplicate_event"),
    ]
    # Same event_id twice; the copy that comes FIRST in the file has the LATER timestamp, so it is the
    # duplicate: "first" means first by event_ts.
    early = event(
        200, event_id="ev-dup-order", session_id="tag-dup-early", event_ts=WINDOW_START + timedelta(hours=9)
    )
    late = event(
        201, event_id="ev-dup-order", session_id="tag-dup-late", event_ts=WINDOW_START + timedelta(hours=10)
    )
    broken = broken_events()
    rows = valid + boundary + [late] + [r for r, _ in duplicates] + [early] + [r for _, r, _ in broken]
    random.Random(7).shuffle(rows)
    expected_rules = {tag: rule for tag, _, rule in broken}
    expected_rules["tag-dup-later"] = "duplicate_event_id"
    expected_rules["tag-dup-late"] = "duplicate_event_id"
    expected_valid_ids = {r["event_id"] for r in valid + boundary} | {"ev-dup-order"}
    return {
        "rows": rows,
        "expected_rules": expected_rules,
        "exact_copy_id": valid[7]["event_id"],
        "expected_valid_ids": expected_valid_ids,
        "n_valid": len(valid) + len(boundary) + 1,
    }


def test_every_broken_event_is_quarantined_with_its_rule(settings, store, put_inputs, corpus):
    put_inputs(corpus["rows"])

    result = validate_events(settings, DS, now=NOW)

    n = len(corpus["rows"])
    n_bad = n - corpus["n_valid"]
    assert result["extracted"] == n
    assert result["valid"] == corpus["n_valid"]
    assert result["quarantined"] == n_bad
    assert result["valid"] + result["quarantined"] == result["extracted"]
    # The exact copy is quarantined but counts on neither side of the fraction.
    assert result["bad_fraction"] == pytest.approx((n_bad - 1) / (n - 1))
    assert (result["valid_key"], result["quarantine_key"]) == (VALID_KEY, QUARANTINE_KEY)

    quarantine = read_table(store, QUARANTINE_KEY)
    assert quarantine.schema.names == [*EVENT_COLUMNS, "rule", "reason"]
    assert quarantine.schema.remove(7).remove(7) == events_schema()
    rows = quarantine.to_pylist()
    assert all(row["reason"] for row in rows)
    got = {tag_of(row): row["rule"] for row in rows if tag_of(row) != corpus["exact_copy_id"]}
    assert got == corpus["expected_rules"]
    exact_copies = [row for row in rows if row["event_id"] == corpus["exact_copy_id"]]
    assert [row["rule"] for row in exact_copies] == ["exact_duplicate_event"]
    assert "exact copy of an earlier event" in exact_copies[0]["reason"]
    assert len(set(corpus["expected_rules"].values()) | {"exact_duplicate_event"}) >= 14

    # Original values travel into quarantine untouched (NaN stays NaN, not null).
    by_tag = {tag_of(row): row for row in rows}
    assert math.isnan(by_tag["tag-nan-dwell"]["dwell_seconds"])
    assert by_tag["tag-nul-item"]["item_id"] == "item-1\x00"
    assert by_tag["tag-upper-type"]["reason"].startswith("event_type 'VIEW' is not one of")
    assert by_tag["tag-nul-item"]["reason"].startswith("item_id contains control characters")
    assert by_tag["ev-long-session"]["reason"].startswith("session_id is longer than 128")
    assert by_tag["tag-bidi-user"]["reason"] == (
        "user_id 'user-?1' contains the invisible format character U+202E "
        "(Unicode category Cf: bidi overrides, zero-width characters, ...)"
    )
    assert by_tag["tag-bidi-user"]["user_id"] == "user-\u202e1"  # the original travels untouched
    assert by_tag["tag-zero-width-item"]["reason"].startswith(
        "item_id 'item-1?' contains the invisible format character U+200B"
    )
    assert by_tag["tag-padded-none-user"]["reason"] == "user_id '  None ' spells a missing value, not an id"
    assert by_tag["tag-null-item-text"]["reason"] == "item_id 'null' spells a missing value, not an id"
    assert "2026-11-21 00:00:00" in by_tag["tag-at-window-end"]["reason"]

    valid = read_table(store, VALID_KEY)
    assert valid.schema == events_schema()
    valid_rows = valid.to_pylist()
    assert {row["event_id"] for row in valid_rows} == corpus["expected_valid_ids"]
    assert len(valid_rows) == corpus["n_valid"]  # event ids in the valid file are unique
    keys = [(row["event_ts"], row["event_id"]) for row in valid_rows]
    assert keys == sorted(keys)
    kept = next(row for row in valid_rows if row["event_id"] == "ev-dup-order")
    assert kept["session_id"] == "tag-dup-early"

    report = read_json(store, REPORT_KEY)
    assert (
        report["extracted"] == n and report["valid"] == corpus["n_valid"] and report["quarantined"] == n_bad
    )
    assert set(report["by_rule"]) == set(RULE_NAMES)
    expected_counts = Counter(corpus["expected_rules"].values()) + Counter({"exact_duplicate_event": 1})
    assert {k: v for k, v in report["by_rule"].items() if v} == dict(expected_counts)
    assert report["threshold"] == settings.max_bad_fraction and report["passed"] is True
    assert (report["exact_duplicates"], report["counted_toward_threshold"]) == (1, n_bad - 1)
    assert report["window"] == {"start": "2026-11-20T00:00:00", "end": "2026-11-21T00:00:00"}


def test_gx_report_mirrors_the_rules(settings, store, put_inputs, corpus):
    put_inputs(corpus["rows"])
    validate_events(settings, DS, now=NOW)

    gx = read_json(store, REPORT_KEY)["gx"]
    assert gx["success"] is False
    assert gx["scope"]["sampled"] is False and gx["scope"]["rows"] == len(corpus["rows"])
    stats = gx["statistics"]
    assert stats["evaluated_expectations"] == len(gx["results"])
    assert stats["unsuccessful_expectations"] > 0
    results = {(r["expectation_type"], r["column"]): r for r in gx["results"]}
    assert set(results[next(iter(results))]) >= {"expectation_type", "column", "success", "unexpected_count"}
    for column in EVENT_COLUMNS:
        assert results[("expect_column_to_exist", column)]["success"] is True
    for column in ("event_id", "user_id", "item_id", "event_type", "event_ts"):
        assert results[("expect_column_values_to_not_be_null", column)]["unexpected_count"] == (
            2 if column == "user_id" else 1  # the two-faults row has a null user_id as well
        )
    # VIEW, 'purchase ', bogus; GX ignores the null event_type.
    assert results[("expect_column_values_to_be_in_set", "event_type")]["unexpected_count"] == 3
    # -0.5, 86400.001, inf; GX treats NaN as missing.
    assert results[("expect_column_values_to_be_between", "dwell_seconds")]["unexpected_count"] == 3
    # GX counts every copy of a duplicated id: 3 ids with 2 copies each.
    assert results[("expect_column_values_to_be_unique", "event_id")]["unexpected_count"] == 6
    assert results[("expect_column_min_to_be_between", "event_ts")]["success"] is False
    assert results[("expect_column_max_to_be_between", "event_ts")]["success"] is False
    # newline, tab and a byte-order mark (a format character)
    assert results[("expect_column_values_to_not_match_regex", "event_id")]["unexpected_count"] == 3
    assert results[("expect_column_value_lengths_to_be_between", "session_id")]["unexpected_count"] == 1


def test_clean_events_pass_everything(settings, store, put_inputs):
    put_inputs(valid_events(300))

    result = validate_events(settings, DS, now=NOW)

    assert (result["extracted"], result["valid"], result["quarantined"]) == (300, 300, 0)
    assert result["bad_fraction"] == 0.0
    report = read_json(store, REPORT_KEY)
    assert report["gx"]["success"] is True, [r for r in report["gx"]["results"] if not r["success"]]
    assert read_table(store, QUARANTINE_KEY).num_rows == 0
    assert read_table(store, QUARANTINE_KEY).schema.names[-2:] == ["rule", "reason"]


def _with_bad(n_total: int, n_unknown_type: int, n_unknown_item: int) -> list[dict]:
    rows = valid_events(n_total)
    for i in range(n_unknown_type):
        rows[i]["event_type"] = "hover"
    for i in range(n_unknown_type, n_unknown_type + n_unknown_item):
        rows[i]["item_id"] = f"missing-{i}"
    return rows


def test_bad_fraction_at_the_threshold_passes(settings, store, put_inputs):
    settings.max_bad_fraction = 0.01
    put_inputs(_with_bad(1000, 6, 4))

    result = validate_events(settings, DS, now=NOW)

    assert (result["valid"], result["quarantined"], result["bad_fraction"]) == (990, 10, 0.01)
    assert read_json(store, REPORT_KEY)["passed"] is True


def test_bad_fraction_above_the_threshold_stops_the_run_after_writing(settings, store, put_inputs):
    settings.max_bad_fraction = 0.01
    put_inputs(_with_bad(1000, 6, 5))

    with pytest.raises(BadDataError) as raised:
        validate_events(settings, DS, now=NOW)

    message = str(raised.value)
    assert message.startswith("1.1% of 1,000 events failed validation (max 1.0%)")
    assert "unknown_event_type=6, item_not_in_catalog=5;" in message
    assert QUARANTINE_KEY in message
    assert store.exists(QUARANTINE_KEY) and store.exists(REPORT_KEY) and store.exists(VALID_KEY)
    assert read_table(store, QUARANTINE_KEY).num_rows == 11
    report = read_json(store, REPORT_KEY)
    assert report["passed"] is False and report["threshold"] == 0.01
    assert report["by_rule"]["unknown_event_type"] == 6 and report["by_rule"]["item_not_in_catalog"] == 5
    assert raised.value.report["quarantined"] == 11


def _with_duplicates(n_total: int, exact: int, near: int) -> list[dict]:
    """n_total valid events, then `exact` redelivered copies of some of them and `near` events that reuse
    an id with other content (a later timestamp)."""
    rows = valid_events(n_total)
    copies = [dict(rows[i]) for i in range(exact)]
    clashes = [
        dict(rows[exact + i], event_ts=rows[exact + i]["event_ts"] + timedelta(seconds=1), dwell_seconds=1.0)
        for i in range(near)
    ]
    return rows + copies + clashes


def test_exact_copies_are_quarantined_but_do_not_count_toward_the_threshold(settings, store, put_inputs):
    settings.max_bad_fraction = 0.01
    put_inputs(_with_duplicates(1000, exact=200, near=10))

    result = validate_events(settings, DS, now=NOW)

    # 200 redeliveries and 10 clashes quarantined; only the clashes count: 10 of 1,010 distinct deliveries.
    assert (result["valid"], result["quarantined"]) == (1000, 210)
    assert result["bad_fraction"] == pytest.approx(10 / 1010)
    report = read_json(store, REPORT_KEY)
    assert report["by_rule"]["exact_duplicate_event"] == 200 and report["by_rule"]["duplicate_event_id"] == 10
    assert (report["exact_duplicates"], report["counted_toward_threshold"], report["passed"]) == (
        200,
        10,
        True,
    )
    rules = Counter(read_table(store, QUARANTINE_KEY).column("rule").to_pylist())
    assert rules == {"exact_duplicate_event": 200, "duplicate_event_id": 10}


def test_near_duplicates_still_stop_the_night(settings, store, put_inputs):
    settings.max_bad_fraction = 0.01
    put_inputs(_with_duplicates(1000, exact=200, near=11))

    with pytest.raises(BadDataError) as raised:
        validate_events(settings, DS, now=NOW)

    message = str(raised.value)
    assert message.startswith("1.1% of 1,011 events failed validation (max 1.0%): duplicate_event_id=11")
    assert "200 exact copies of other events, also quarantined, are not counted" in message


def test_exact_copies_count_when_the_setting_says_so(settings, store, put_inputs):
    settings.max_bad_fraction = 0.01
    settings.validation.exact_duplicates_exempt = False
    put_inputs(_with_duplicates(1000, exact=20, near=0))

    with pytest.raises(BadDataError, match="exact_duplicate_event=20"):
        validate_events(settings, DS, now=NOW)
    assert read_json(store, REPORT_KEY)["bad_fraction"] == pytest.approx(20 / 1020)


def test_rerun_writes_identical_bytes_whatever_the_input_order(settings, store, put_inputs, corpus):
    outputs = (VALID_KEY, QUARANTINE_KEY, REPORT_KEY)
    put_inputs(corpus["rows"])
    validate_events(settings, DS, now=NOW)
    first = {key: store.get_bytes(key) for key in outputs}

    validate_events(settings, DS, now=NOW)
    assert {key: store.get_bytes(key) for key in outputs} == first

    shuffled = list(corpus["rows"])
    random.Random(11).shuffle(shuffled)
    put_inputs(shuffled)
    validate_events(settings, DS, now=NOW)
    assert {key: store.get_bytes(key) for key in outputs} == first


def test_large_input_runs_gx_on_a_sample(settings, store, put_inputs):
    put_inputs(valid_events(200))

    validate_events(settings, DS, now=NOW, gx_max_rows=50)

    scope = read_json(store, REPORT_KEY)["gx"]["scope"]
    assert scope["sampled"] is True
    assert (scope["rows"], scope["of_rows"], scope["sample_every"]) == (50, 200, 4)
    assert "sample" in scope["description"]


def test_empty_window_is_valid(settings, store, put_inputs):
    put_inputs([])

    result = validate_events(settings, DS, now=NOW)

    counts = (result["extracted"], result["valid"], result["quarantined"], result["bad_fraction"])
    assert counts == (0, 0, 0, 0.0)
    assert read_table(store, VALID_KEY).schema == events_schema()
    assert json.loads(store.get_bytes(REPORT_KEY))["extracted"] == 0


def test_lookback_widens_the_window(settings, store, put_inputs):
    settings.lookback_days = 3
    two_days_ago = event(1, event_ts=WINDOW_START - timedelta(days=2))
    three_days_ago = event(2, event_ts=WINDOW_START - timedelta(days=2, microseconds=1))
    put_inputs([two_days_ago, three_days_ago])

    result = validate_events(settings, DS, now=NOW)

    assert (result["valid"], result["quarantined"]) == (1, 1)
    assert read_table(store, QUARANTINE_KEY).column("rule").to_pylist() == ["event_ts_before_window"]


# -- schema --------------------------------------------------------------------------------------------


def test_missing_column_is_named_before_any_row_work(settings, store, put_inputs):
    table = pa.Table.from_pylist(valid_events(10), schema=events_schema()).drop_columns(["dwell_seconds"])
    put_inputs(table)

    with pytest.raises(BadDataError) as raised:
        validate_events(settings, DS, now=NOW)

    message = str(raised.value)
    assert "'dwell_seconds' is missing" in message
    assert "the warehouse query (sql/extract_events.sql) must return dwell_seconds as double" in message
    assert raised.value.report is None
    assert not store.exists(VALID_KEY) and not store.exists(QUARANTINE_KEY) and not store.exists(REPORT_KEY)


def test_event_ts_as_string_is_named_with_both_types(settings, store, put_inputs):
    table = pa.Table.from_pylist(valid_events(10), schema=events_schema())
    as_text = table.set_column(
        5, pa.field("event_ts", pa.string()), table.column("event_ts").cast(pa.string())
    )
    put_inputs(as_text)

    with pytest.raises(BadDataError) as raised:
        validate_events(settings, DS, now=NOW)

    message = str(raised.value)
    assert "column 'event_ts' has type string, expected timestamp[us]" in message
    assert "must return event_ts as timestamp[us] (found string)" in message
    assert not store.exists(VALID_KEY)


def test_catalog_without_item_id_is_bad_data(settings, store, put_inputs):
    put_inputs(valid_events(10), items=pa.table({"sku": pa.array(["a"])}))

    with pytest.raises(BadDataError, match=r"'item_id' is missing.*extract_items\.sql"):
        validate_events(settings, DS, now=NOW)


def test_other_text_encodings_and_extra_columns_are_accepted(settings, store, put_inputs):
    table = pa.Table.from_pylist(valid_events(20), schema=events_schema())
    table = table.set_column(
        1, pa.field("user_id", pa.large_string()), table.column("user_id").cast(pa.large_string())
    )
    table = table.set_column(4, "event_type", table.column("event_type").dictionary_encode())
    table = table.append_column("country", pa.array(["de"] * 20))
    put_inputs(table)

    result = validate_events(settings, DS, now=NOW)

    assert result["valid"] == 20
    assert read_table(store, VALID_KEY).schema == events_schema()
    assert read_json(store, REPORT_KEY)["ignored_columns"] == ["country"]
    assert pq.read_schema(store.path(QUARANTINE_KEY)).names[-1] == "reason"


def test_gx_in_a_worker_process_writes_the_same_report(settings, store, put_inputs, corpus, monkeypatch):
    """Big windows run GX in a worker process (its import overlaps the row work): same report, same bytes."""
    from pmg_tasks.validation import stage

    put_inputs(corpus["rows"])
    validate_events(settings, DS, now=NOW)
    in_process = store.get_bytes(REPORT_KEY)

    workers = []

    class SpyWorker(stage.GxWorker):
        def run(self, *args, **kwargs):
            workers.append(self)
            return super().run(*args, **kwargs)

    monkeypatch.setattr(stage, "_use_gx_worker", lambda extracted: True)
    monkeypatch.setattr(stage, "GxWorker", SpyWorker)
    validate_events(settings, DS, now=NOW)
    assert len(workers) == 1 and workers[0].process.returncode == 0
    assert store.get_bytes(REPORT_KEY) == in_process


def test_a_catalog_from_elsewhere_does_not_vouch_for_bad_item_ids(settings, store, put_inputs):
    """Only ids that pass the id rules count as in the catalog, so an items.parquet that was not cleaned by
    extraction cannot let a null-like or bidi item id through."""
    items = items_table()
    bad_ids = ["null", "item-\u202e1", "NaN "]
    extra = pa.Table.from_pylist(
        [dict(items.slice(0, 1).to_pylist()[0], item_id=item_id) for item_id in bad_ids], schema=items.schema
    )
    put_inputs(
        [event(i, item_id=item_id) for i, item_id in enumerate(bad_ids)] + valid_events(10, first=10),
        items=pa.concat_tables([items, extra]),
    )

    validate_events(settings, DS, now=NOW)

    rules = dict(
        zip(*read_table(store, QUARANTINE_KEY).select(["item_id", "rule"]).to_pydict().values(), strict=True)
    )
    assert rules == {"null": "null_like_id", "item-\u202e1": "id_format_characters", "NaN ": "null_like_id"}
