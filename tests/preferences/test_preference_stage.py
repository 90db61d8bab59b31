import datetime as dt
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
    return Settings(home=tmp_path, store_root=str(tmp_path / "store"), preferences={"token_levels": 2, "token_codes": 8})


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
        assert len(tokens) == settings.preferences.token_levels
        parsed = [TOKEN.fullmatch(token) for token in tokens]
        assert all(parsed), tokens
        assert [int(m.group(1)) for m in parsed] == list(range(settings.preferences.token_levels))
        assert all(0 <= int(m.group(2)) < settings.preferences.token_codes for m in parsed)
    # A segment is the users sharing their first `segment_levels` tokens of every view, and nothing else.
    coarse = frame["tokens"].map(lambda tokens: tuple(tokens[: settings.preferences.segment_levels]))
    assert (frame["segment_tokens"].map(tuple) == coarse).all()
    assert frame.groupby(coarse)["segment_id"].nunique().eq(1).all()
    assert frame["segment_id"].nunique() == coarse.nunique() < frame["tokens"].map(tuple).nunique()

    report = read_json(store, run_key(NIGHT_1, "preference_graph.json"))
    assert report["users"] == len(frame) == result["users"] == 50
    assert report["items"] == 40
    assert report["items_without_text"] == 0
    assert report["edges"] > 0 and report["epochs"] == settings.preferences.epochs
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


def test_every_token_is_described(settings, store, night_1):
    update_preference_tokens(settings, NIGHT_1)
    descriptors = read_frame(store, run_key(NIGHT_1, "token_descriptors.parquet"))
    tokens = read_frame(store, run_key(NIGHT_1, "preference_tokens.parquet"))

    assert list(descriptors.columns) == [
        "token", "view", "level", "code", "users", "top_keywords", "top_categories", "description"
    ]  # fmt: skip
    used = {token for row in tokens["tokens"] for token in row}
    assert set(descriptors["token"]) == used
    level_0 = descriptors[descriptors["level"] == 0]
    assert level_0["users"].sum() == len(tokens)
    # The synthetic users each like one cluster, so each level-0 code is mostly one cluster's categories.
    clusters = [{"outdoor", "hiking"}, {"kitchen", "baking"}, {"audio", "music"}, {"beauty", "skincare"}]
    assert all(any(set(row[:2]) == c for c in clusters) for row in level_0["top_categories"])
    assert all(row.size == 0 for row in descriptors["top_keywords"])
    assert not read_json(store, run_key(NIGHT_1, "preference_graph.json"))["descriptors_use_keywords"]


def test_descriptors_use_keywords_when_the_keyword_stage_ran(settings, store, night_1, make_events):
    users = sorted(make_events(NIGHT_1)["user_id"].unique())
    words = {0: ["rugged"], 1: ["homemade"], 2: ["loud"], 3: ["glowing"]}
    keywords = pd.DataFrame(
        {"user_id": users, "preference_keywords": [words[int(u[-4:]) % 4] for u in users]}
    )
    write_table(store, run_key(NIGHT_1, "keywords.parquet"), keywords)
    update_preference_tokens(settings, NIGHT_1)
    descriptors = read_frame(store, run_key(NIGHT_1, "token_descriptors.parquet"))

    level_0 = descriptors[descriptors["level"] == 0]
    assert all(len(row) >= 1 for row in level_0["top_keywords"])
    assert all(
        desc.split(", ")[0] in {"rugged", "homemade", "loud", "glowing"} for desc in level_0["description"]
    )
    assert read_json(store, run_key(NIGHT_1, "preference_graph.json"))["descriptors_use_keywords"]


def test_token_churn_counts_unchanged_users(settings, store, night_1, night_2):
    update_preference_tokens(settings, NIGHT_1)
    first = tokens_by_user(store, NIGHT_1)
    update_preference_tokens(settings, NIGHT_2)
    second = tokens_by_user(store, NIGHT_2)
    churn = read_json(store, run_key(NIGHT_2, "preference_graph.json"))["token_churn"]

    # The returning users did exactly the same again: all 50 are unchanged; the 5 newcomers are not counted.
    assert churn["unchanged_users"] == 50
    assert churn["changed_tokens"] == sum(second[user] != tokens for user, tokens in first.items())
    assert churn["share"] == pytest.approx(churn["changed_tokens"] / 50, abs=1e-4)


def test_weekly_full_retrain_starts_fresh_but_keeps_code_numbers(settings, store, night_1, night_2):
    update_preference_tokens(settings, NIGHT_1)
    first = tokens_by_user(store, NIGHT_1)
    weekday = dt.date.fromisoformat(NIGHT_2).weekday()
    retrain = settings.model_copy(
        update={"preferences": settings.preferences.model_copy(update={"full_retrain_weekday": weekday})}
    )
    result = update_preference_tokens(retrain, NIGHT_2)
    report = read_json(store, run_key(NIGHT_2, "preference_graph.json"))

    assert result["warm_start_from"] is None
    assert report["full_retrain"] and not report["warm_started"]
    assert report["previous_version"] == NIGHT_1
    assert report["quantization"]["txt"]["codes_aligned_to_previous"]
    assert not report["codebooks_warm_started"]
    assert (report["model_users"], report["new_users"]) == (55, 55)
    assert read_latest_version(store) == NIGHT_2
    # A fresh model's codes are renumbered after last night's. Measured: 27 of 50 returning users keep their
    # level-0 token (8 codes over 4 real tastes split differently each fit); 10 without the renumbering.
    second = tokens_by_user(store, NIGHT_2)
    kept = sum(second[user][0] == tokens[0] for user, tokens in first.items())
    assert kept >= 0.4 * len(first), f"only {kept} of {len(first)} kept their level-0 token"


def test_full_retrain_stops_early_on_each_users_latest_items(settings, store, make_events, make_items):
    write_table(
        store, run_key(NIGHT_1, "events_valid.parquet"), make_events(NIGHT_1, n_items=80, per_user=12)
    )
    write_table(store, run_key(NIGHT_1, "items.parquet"), make_items(80))
    update_preference_tokens(settings.model_copy(update={"preferences": settings.preferences.model_copy(update={"epochs": 60, "patience": 3})}), NIGHT_1)
    report = read_json(store, run_key(NIGHT_1, "preference_graph.json"))

    assert report["validation_recall@20"] > 0.3
    assert report["epochs"] <= report["best_epoch"] + 3
    assert report["stopped_early"] == (report["epochs"] < 60)


def test_items_with_images_give_image_tokens(settings, store, night_1, make_items):
    from tests.preferences.test_preference_images import png

    items = make_items()
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]
    # Only the first 20 items have an image; a picture's colour follows the item's cluster.
    for index in range(20):
        store.put_bytes(f"catalog/{index}.png", png(colours[index % 4]))
    items["image_uri"] = [f"catalog/{index}.png" if index < 20 else None for index in range(len(items))]
    write_table(store, run_key(NIGHT_1, "items.parquet"), items)
    update_preference_tokens(settings, NIGHT_1)
    table = read_table(store, run_key(NIGHT_1, "preference_tokens.parquet"))
    frame = table.to_pandas()
    report = read_json(store, run_key(NIGHT_1, "preference_graph.json"))

    assert report["views"] == ["txt", "img"] and report["items_with_image"] == 20
    assert table.schema.field("img_tokens").type == pa.list_(pa.string())
    image_users = frame[frame["img_tokens"].map(len) > 0]
    assert 0 < len(image_users) == report["quantization"]["img"]["users"] <= len(frame)
    for row in frame.itertuples():
        assert [t for t in row.tokens if t.startswith("<pref_txt_")] == list(row.txt_tokens)
        assert [t for t in row.tokens if t.startswith("<pref_img_")] == list(row.img_tokens)
        assert len(row.img_tokens) in (0, settings.preferences.token_levels)
        levels = settings.preferences.segment_levels
        assert list(row.segment_tokens) == [*row.txt_tokens[:levels], *row.img_tokens[:levels]]
    assert frame["segment_id"].nunique() == frame["segment_tokens"].map(tuple).nunique()
    descriptors = read_frame(store, run_key(NIGHT_1, "token_descriptors.parquet"))
    assert set(descriptors["view"]) == {"txt", "img"}


def test_a_damaged_checkpoint_is_passed_over_for_the_earlier_version_and_the_night_says_so(
    settings, store, night_1, night_2, caplog
):
    update_preference_tokens(settings, NIGHT_1)
    # An intact version before night 1, then night 1's checkpoint cut short.
    earlier = "2026-11-19"
    for name in ("checkpoint.pt", "codebooks.pt"):
        store.put_bytes(gnn_model_prefix(earlier) + name, store.get_bytes(gnn_model_prefix(NIGHT_1) + name))
    damaged = gnn_model_prefix(NIGHT_1) + "checkpoint.pt"
    store.put_bytes(damaged, store.get_bytes(damaged)[:200])

    with caplog.at_level("WARNING", logger="pmg_tasks.preferences.stage"):
        result = update_preference_tokens(settings, NIGHT_2)
    report = read_json(store, run_key(NIGHT_2, "preference_graph.json"))
    assert result["warm_start_from"] == report["warm_start_from"] == earlier
    assert result["damaged_versions_passed_over"] == [NIGHT_1]
    assert report["damaged_versions_passed_over"][0]["version"] == NIGHT_1
    assert f"preference model version {NIGHT_1} is damaged" in caplog.text
    assert read_latest_version(store) == NIGHT_2
