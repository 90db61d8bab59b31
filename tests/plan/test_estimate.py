"""`pmg plan --estimate`: a night's cost from the warehouse, the campaigns and earlier nights, counted
independently here from the seeded rows."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from pmg_tasks.cli import main
from pmg_tasks.extraction_window import extraction_window
from pmg_tasks.layout import run_key
from pmg_tasks.plan.estimate import Throughput, estimate_night, read_throughput
from pmg_tasks.store import open_store, write_table
from pmg_tasks.text_safety import split_categories
from pmg_tasks.warehouse import connect

DS = "2026-11-20"
EARLIER = "2026-11-19"


def window_events(settings) -> pd.DataFrame:
    start, end = extraction_window(DS, settings.lookback_days)
    with connect(settings) as warehouse:
        events = warehouse.fetch_frame("SELECT user_id, item_id, event_ts FROM events")
        items = warehouse.fetch_frame("SELECT item_id, categories FROM items")
    events = events[(events["event_ts"] >= start) & (events["event_ts"] < end)]
    return events.merge(items, on="item_id", how="left"), end


def test_counts_follow_the_campaigns_and_the_window(seeded_settings):
    settings = seeded_settings
    events, end = window_events(settings)
    night = estimate_night(settings, DS, gpus=2, throughput=Throughput())
    assert night.window_users == events["user_id"].nunique()

    by_id = {c.campaign_id: c for c in night.campaigns}
    # winter-classics: everyone, capped at 12; sci-fi-weekend: users touching Sci-Fi or Action, capped at 8.
    assert by_id["winter-classics"].users == min(12, events["user_id"].nunique())
    touching = events[events["categories"].map(lambda v: bool({"Sci-Fi", "Action"} & set(split_categories(v))))]
    assert by_id["sci-fi-weekend"].users == min(8, touching["user_id"].nunique())
    sci_fi = by_id["sci-fi-weekend"]
    assert sci_fi.requested_creatives == sci_fi.users * 1 * 2  # one target, two variants
    # No earlier night: segments are bounded by the token grid, and never more than the users.
    assert night.segments == 16 ** 2 + 1 and "no earlier night" in night.segments_source
    assert sci_fi.generations == min(sci_fi.users, night.segments) * sci_fi.targets
    assert sci_fi.candidate_images == sci_fi.generations * 3
    assert night.shards == math.ceil(night.generations / settings.generation.requests_per_shard)
    # The catalog backend calls no model; no throughput known, so no GPU-hours, and it says why.
    assert night.keyword_requests == 0 and night.gpu_hours is None
    assert "--images-per-s" in night.unknown[0]


def test_earlier_nights_set_segments_and_the_keyword_cache(seeded_settings):
    settings = seeded_settings.model_copy(update={"keyword_backend": "transformers"})
    events, end = window_events(settings)
    users = sorted(events["user_id"].unique())
    assert estimate_night(settings, DS, 1, Throughput()).keyword_requests == len(users)

    store = open_store(settings)
    seen = users[: len(users) // 2]
    write_table(store, run_key(EARLIER, "histories.parquet"), pd.DataFrame({"user_id": seen}))
    write_table(store, run_key(EARLIER, "preference_tokens.parquet"),
                pd.DataFrame({"user_id": seen, "segment_id": [f"s{i % 3}" for i in range(len(seen))]}))
    night = estimate_night(settings, DS, 1, Throughput())
    today = set(events.loc[events["event_ts"] >= end - pd.Timedelta(days=1), "user_id"])
    assert night.keyword_requests == len(today | (set(users) - set(seen)))
    assert night.segments == 3 and night.segments_source == run_key(EARLIER, "preference_tokens.parquet")
    winter = next(c for c in night.campaigns if c.campaign_id == "winter-classics")
    assert winter.generations == 3 * winter.targets


def test_gpu_time_from_a_throughput_and_n_workers(seeded_settings):
    throughput = Throughput(images_per_s=2.0, images_source="given")
    one, four = (estimate_night(seeded_settings, DS, n, throughput) for n in (1, 4))
    assert one.gpu_hours == four.gpu_hours == round(one.candidate_images / 2.0 / 3600, 3)
    per_shard_s = one.candidate_images / one.shards / 2.0
    assert four.wall_hours == round(math.ceil(one.shards / 4) * per_shard_s / 3600, 3)


def test_throughput_comes_from_benchmark_results_unless_given(tmp_path):
    assert read_throughput(tmp_path).images_per_s is None
    (tmp_path / "generation_gpu.json").write_text(json.dumps({"gpu_figures": {"shard": {"images_per_s": 11.5}}}))
    measured = read_throughput(tmp_path)
    assert (measured.images_per_s, measured.images_source) == (11.5, "benchmarks/results/generation_gpu.json")
    assert read_throughput(tmp_path, images_per_s=3.0).images_source == "given"


def test_the_command_prints_the_estimate(seeded_settings, monkeypatch, capsys):
    monkeypatch.setenv("PMG_HOME", str(seeded_settings.home))
    assert main(["plan", "--estimate", "--ds", DS, "--gpus", "8", "--images-per-s", "10"]) == 0
    out = capsys.readouterr().out
    for words in ("users with events", "campaign winter-classics", "distinct generations", "shards:",
                  "keyword requests after the cache", "GPU-hours", "wall time on 8 GPUs", "(given)"):
        assert words in out
    assert main(["plan", "--estimate", "--ds", "20/11/2026"]) == 2
    assert main(["plan", "--estimate", "--ds", DS, "--gpus", "0"]) == 2


@pytest.mark.parametrize("gpus", [0, -1])
def test_a_night_needs_a_gpu(seeded_settings, gpus):
    with pytest.raises(ValueError, match="--gpus"):
        estimate_night(seeded_settings, DS, gpus, Throughput())
