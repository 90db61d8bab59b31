import re
import shutil
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pytest

from pmg_tasks.layout import gnn_model_prefix, run_key
from pmg_tasks.preferences import update_preference_tokens
from pmg_tasks.preferences.stage import GNN_LATEST_KEY, read_latest_version
from pmg_tasks.settings import Settings
from pmg_tasks.store import LocalStore, read_frame, read_json, read_table, write_table

NIGHT_1, NIGHT_2 = "2026-11-20", "2026-11-21"
TOKEN = re.compile(r"<pref_txt_(\d+)_(\d+)>")


@pytest.fixture
def settings(tmp_path):
    return Settings(home=tmp_path, store_root=str(tmp_path / "store"), token_levels=2, token_codes=8)


@pytest.fixture
def store(settings):
    return LocalStore(settings.store_root)


@pytest.fixture
def night_1(store, make_events, make_items):
    write_table(store, run_key(NIGHT_1, "events_valid.parquet"), make_events(NIGHT_1))
    write_table(store, run_key(NIGHT_1, "items.parquet"), make_items())


@pytest.fixture
def night_2(store, make_second_night, make_items):
    write_table(store, run_key(NIGHT_2, "events_valid.parquet"), make_second_night(NIGHT_2))
    write_table(store, run_key(NIGHT_2, "items.parquet"), make_items(44))


def tokens_by_user(store, ds):
    frame = read_frame(store, run_key(ds, "preference_tokens.parquet"))
    return {user: tuple(tokens) for user, tokens in zip(frame["user_id"], frame["tokens"], strict=True)}


def test_outputs_have_the_published_schema(settings, store, night_1, make_events):
    result = update_preference_tokens(settings, NIGHT_1)

    table = read_table(store, result["tokens_key"])
    assert table.schema.field("user_id").type == pa.string()
    assert table.schema.field("tokens").type == pa.list_(pa.string())
    assert table.schema.field("segment_id").type == pa.string()
    frame = table.to_pandas()
    assert sorted(frame["user_id"]) == sorted(make_events(NIGHT_1)["user_id"].unique())
    assert frame["user_id"].is_unique
    for tokens in frame["tokens"]:
        assert len(tokens) == settings.token_levels
        parsed = [TOKEN.fullmatch(token) for token in tokens]
        assert all(parsed), tokens
        assert [int(m.group(1)) for m in parsed] == list(range(settings.token_levels))
        assert all(0 <= int(m.group(2)) < settings.token_codes for m in parsed)
    # one segment per distinct token tuple
    assert frame.groupby(frame["tokens"].map(tuple))["segment_id"].nunique().eq(1).all()
    assert frame["segment_id"].nunique() == frame["tokens"].map(tuple).nunique()

    report = read_json(store, run_key(NIGHT_1, "preference_graph.json"))
    assert report["users"] == len(frame) == result["users"] == 50
    assert report["items"] == 40
    assert report["items_without_text"] == 0
    assert report["edges"] > 0 and report["epochs"] == settings.gnn_epochs
    assert report["final_loss"] < report["first_loss"]
    assert 0 <= report["reconstruction_error"] < 1
    assert report["segments"] == result["segments"] > 1
    assert report["warm_started"] is False and report["warm_start_from"] is None
    assert result == {
        "users": 50,
        "segments": report["segments"],
        "version": NIGHT_1,
        "warm_start_from": None,
        "tokens_key": run_key(NIGHT_1, "preference_tokens.parquet"),
    }
    assert store.exists(gnn_model_prefix(NIGHT_1) + "checkpoint.pt")
    assert store.exists(gnn_model_prefix(NIGHT_1) + "codebooks.pt")
    assert read_latest_version(store) == NIGHT_1


def test_rerun_of_the_same_date_writes_the_same_tokens(settings, store, night_1):
    update_preference_tokens(settings, NIGHT_1)
    first = tokens_by_user(store, NIGHT_1)
    again = update_preference_tokens(settings, NIGHT_1)

    assert tokens_by_user(store, NIGHT_1) == first
    assert again["warm_start_from"] is None, "a rerun must not warm-start from its own output"
    assert read_latest_version(store) == NIGHT_1


def test_second_night_warm_starts_grows_and_keeps_tokens(settings, store, night_1, night_2):
    update_preference_tokens(settings, NIGHT_1)
    first = tokens_by_user(store, NIGHT_1)
    result = update_preference_tokens(settings, NIGHT_2)
    second = tokens_by_user(store, NIGHT_2)
    report = read_json(store, run_key(NIGHT_2, "preference_graph.json"))

    assert result["version"] == NIGHT_2 and result["warm_start_from"] == NIGHT_1
    assert report["warm_started"] and report["codebooks_warm_started"]
    assert (report["model_users"], report["new_users"]) == (55, 5)
    assert (report["model_items"], report["new_items"]) == (44, 4)
    assert len(second) == 55
    # Warm weights already fit the returning users: training starts near where night 1 ended.
    night_1_report = read_json(store, run_key(NIGHT_1, "preference_graph.json"))
    assert report["first_loss"] < 0.5 * night_1_report["first_loss"]
    kept = sum(second[user] == tokens for user, tokens in first.items())
    assert kept >= 0.7 * len(first), f"only {kept} of {len(first)} unchanged users kept their tokens"
    assert read_latest_version(store) == NIGHT_2

    # A rerun of night 1 now (LATEST is later) retraces night 1 and leaves LATEST alone.
    update_preference_tokens(settings, NIGHT_1)
    assert tokens_by_user(store, NIGHT_1) == first
    assert read_latest_version(store) == NIGHT_2


def test_latest_moves_only_after_a_night_succeeds(settings, store, night_1, night_2):
    update_preference_tokens(settings, NIGHT_1)
    # Make the night fail late, after training, where the run report is written.
    blocker = store.path(run_key(NIGHT_2, "preference_graph.json"))
    blocker.mkdir(parents=True)
    with pytest.raises(OSError):
        update_preference_tokens(settings, NIGHT_2)

    assert store.get_bytes(GNN_LATEST_KEY).decode() == NIGHT_1
    assert not store.exists(gnn_model_prefix(NIGHT_2) + "codebooks.pt")

    shutil.rmtree(blocker)
    result = update_preference_tokens(settings, NIGHT_2)
    assert result["warm_start_from"] == NIGHT_1
    assert read_latest_version(store) == NIGHT_2


def test_no_valid_events_names_the_key(settings, store, make_events, make_items):
    empty = make_events(NIGHT_1).head(0)
    write_table(store, run_key(NIGHT_1, "events_valid.parquet"), empty)
    write_table(store, run_key(NIGHT_1, "items.parquet"), make_items())

    with pytest.raises(ValueError, match=r"runs/ds=2026-11-20/events_valid\.parquet.*validation"):
        update_preference_tokens(settings, NIGHT_1)
    assert not store.exists(GNN_LATEST_KEY)


def test_bad_event_type_names_the_key(settings, store, make_events, make_items):
    events = make_events(NIGHT_1)
    events.loc[0, "event_type"] = "teleport"
    write_table(store, run_key(NIGHT_1, "events_valid.parquet"), events)
    write_table(store, run_key(NIGHT_1, "items.parquet"), make_items())

    with pytest.raises(ValueError, match=r"events_valid\.parquet.*teleport"):
        update_preference_tokens(settings, NIGHT_1)


def test_ds_must_be_a_date(settings):
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        update_preference_tokens(settings, "20261120")


def test_items_without_events_do_not_become_users_or_items(settings, store, night_1, make_items):
    write_table(store, run_key(NIGHT_1, "items.parquet"), pd.concat([make_items(), make_items(3, first=90)]))
    update_preference_tokens(settings, NIGHT_1)

    assert read_json(store, run_key(NIGHT_1, "preference_graph.json"))["model_items"] == 40


def test_importing_the_stage_loads_no_torch():
    # Airflow imports the package while parsing DAGs; torch must wait until the task runs.
    code = "import sys, pmg_tasks.preferences; print(sorted({'torch', 'pandas'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.strip() == "[]"
