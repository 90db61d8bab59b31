"""Publishing turns the night's choices into manifests (one row per user, target item and rank), a report and
`_SUCCESS`, written last; the manifests read back as one dataset with pandas, pyarrow and DuckDB."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from pmg_tasks.layout import manifest_key, report_key, run_key, shard_result_key, success_key
from pmg_tasks.publish import MANIFEST_COLUMNS, publish_run
from pmg_tasks.settings import Settings
from pmg_tasks.store import open_store, read_frame, read_json, write_json, write_table
from tests.conftest import DS
from tests.pipeline import run_stages_until


@pytest.fixture(scope="module")
def generated_home(tmp_path_factory, test_size_models):
    """A seeded shop run through every stage up to publish, once for the module."""
    from pmg_tasks.cli import seed_demo

    home = tmp_path_factory.mktemp("generated") / "pmg"
    settings = Settings(home=home, models=test_size_models)
    seed_demo(settings, DS, users=60, items=40, days=7, overwrite_campaigns=True)
    run_stages_until(settings, DS, "generate")
    return home


@pytest.fixture
def generated(generated_home, tmp_path, test_size_models) -> Settings:
    home = tmp_path / "pmg"
    shutil.copytree(generated_home, home)
    return Settings(home=home, models=test_size_models)


def manifests(settings: Settings) -> pd.DataFrame:
    store = open_store(settings)
    keys = [k for k in store.list_keys(f"manifests/ds={DS}/") if k.endswith("manifest.parquet")]
    return pd.concat([read_frame(store, k) for k in keys], ignore_index=True)


def test_one_row_per_user_target_and_rank_and_each_creative_stored_once(generated):
    result = publish_run(generated, DS)
    store = open_store(generated)
    requests = read_frame(store, run_key(DS, "requests.parquet"))
    manifest = manifests(generated)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == result["rows"] == int(requests["variants"].sum())
    per_request = manifest.groupby(["campaign_id", "user_id", "item_id"])["rank"].apply(list)
    wanted = requests.set_index(["campaign_id", "user_id", "item_id"])["variants"]
    assert all(per_request[key] == list(range(1, v + 1)) for key, v in wanted.items())
    assert manifest["image_key"].map(store.exists).all()
    pngs = [k for k in store.list_keys(f"creatives/ds={DS}/") if k.endswith(".png")]
    assert len(pngs) == manifest["creative_id"].nunique()
    # Shared generations: some creative went to more than one user (the demo's segments hold several).
    assert manifest.groupby("creative_id")["user_id"].nunique().max() > 1
    assert np.isfinite(manifest[["d_p", "d_t", "consistency", "z"]].to_numpy()).all()
    assert manifest["headline"].str.len().gt(0).all()
    assert (manifest["token_embeddings"].str.startswith(f"tokens-{DS}-")).all()
    assert store.exists(success_key(DS))


def test_the_manifests_root_reads_as_one_dataset_with_pandas_pyarrow_and_duckdb(generated):
    import duckdb
    import pyarrow.parquet as pq

    publish_run(generated, DS)
    store = open_store(generated)
    root = store.path("manifests")
    expected = len(manifests(generated))
    by_pandas = pd.read_parquet(root)
    assert len(by_pandas) == expected and set(by_pandas["ds"].astype(str)) == {DS}
    assert set(by_pandas["campaign"].astype(str)) == set(by_pandas["campaign_id"])
    assert pq.read_table(root).num_rows == expected
    by_duckdb = duckdb.sql(
        f"SELECT ds, count(*) AS n FROM read_parquet('{root}/**/*.parquet', hive_partitioning = true) GROUP BY ds"
    ).fetchall()
    assert [(str(ds), n) for ds, n in by_duckdb] == [(DS, expected)]


def test_the_report_escapes_what_comes_from_the_data_and_prints_no_missing_values(generated):
    store = open_store(generated)
    generations = read_frame(store, run_key(DS, "generations.parquet"))
    generations.loc[0, "prompt"] = "<script>alert(1)</script>"
    write_table(store, run_key(DS, "generations.parquet"), generations)
    publish_run(generated, DS)
    report = store.get_bytes(report_key(DS)).decode()
    assert "<script>alert(1)</script>" not in report and "&lt;script&gt;" in report
    for campaign_id in ("winter-classics", "sci-fi-weekend"):
        assert f"Campaign {campaign_id}" in report
    assert "distinct generations" in report
    for missing in ("None", "nan", "NaN", "null"):
        assert f">{missing}<" not in report and f": {missing}" not in report


def test_publish_refuses_when_a_shard_did_not_finish(generated):
    store = open_store(generated)
    store.delete_prefix(shard_result_key(DS, 0))
    with pytest.raises(RuntimeError, match=r"generate shards \[0\] .* rerun the failed generate"):
        publish_run(generated, DS)
    assert not store.exists(success_key(DS))


def test_a_user_with_fewer_creatives_than_planned_stops_publishing(generated):
    store = open_store(generated)
    result = read_frame(store, shard_result_key(DS, 0))
    write_table(store, shard_result_key(DS, 0), result.iloc[1:])
    with pytest.raises(RuntimeError, match="fewer creatives than planned"):
        publish_run(generated, DS)
    assert not store.exists(success_key(DS))


def test_a_campaign_dropped_since_the_last_attempt_loses_its_manifest(generated):
    publish_run(generated, DS)
    store = open_store(generated)
    stale = manifest_key(DS, "retired-campaign")
    store.put_bytes(stale, b"old")
    publish_run(generated, DS)
    assert not store.exists(stale)


def test_a_request_the_safety_checks_blocked_is_left_out_and_counted(generated):
    store = open_store(generated)
    result = read_frame(store, shard_result_key(DS, 0))
    signature = result["signature"].iloc[0]
    users = result.loc[result["signature"] == signature, "user_id"].unique()
    blocked = result[result["signature"] == signature].drop_duplicates("user_id").assign(
        rank=0, creative_id="", image_key="", safety="blocked", flagged='{"nudenet:FEMALE_BREAST_EXPOSED": 2}'
    )
    write_table(store, shard_result_key(DS, 0), pd.concat([result[result["signature"] != signature], blocked]))
    publish_run(generated, DS)
    manifest = manifests(generated)
    assert not (manifest["signature"] == signature).any()
    counts = read_json(store, run_key(DS, "stats/publish.json"))["safety"]
    assert counts["blocked_requests"] == 1 and counts["blocked_users"] == len(users)
    assert counts["flagged"] == {"nudenet:FEMALE_BREAST_EXPOSED": 2}
    assert "1 requests" in store.get_bytes(report_key(DS)).decode()


def test_the_manifest_is_typed_as_its_contract_and_names_the_models(generated):
    import pyarrow.parquet as pq

    from pmg_tasks import manifest as contract

    publish_run(generated, DS)
    store = open_store(generated)
    table = pq.read_table(store.path(manifest_key(DS, "winter-classics")))
    assert table.schema.remove_metadata() == contract.schema().remove_metadata()
    rows = table.to_pandas()
    assert set(rows["safety"]) <= {"passed", "replaced"} and set(rows["personalization"]) <= {"segment", "user"}
    for column in ("diffusion_model", "clip_model"):
        assert rows[column].str.fullmatch(r"[A-Za-z0-9._-]+-[0-9a-f]{12}").all(), column
    assert (rows["llm_model"] == "template").all()  # the demo's catalog backend writes template headlines
    generations = read_frame(store, run_key(DS, "generations.parquet")).set_index("signature")
    assert (rows["prompt"] == generations.loc[rows["signature"], "prompt"].to_numpy()).all()
    assert (rows["prompt_tokens"] > 0).all()
    assert contract.missing_requests(table) == [] and table.schema.metadata[contract.COMPLETE_KEY] == b"true"


def test_a_rerun_writes_byte_identical_manifests_and_marker(generated):
    store = open_store(generated)
    publish_run(generated, DS)
    keys = [k for k in store.list_keys(f"manifests/ds={DS}/")]
    first = {key: store.get_bytes(key) for key in keys}
    publish_run(generated, DS)
    assert {key: store.get_bytes(key) for key in store.list_keys(f"manifests/ds={DS}/")} == first


def test_creatives_no_manifest_names_go_after_the_new_manifests_and_before_the_marker(generated, monkeypatch):
    import pmg_tasks.publish as publish
    from pmg_tasks.store import LocalStore

    store = open_store(generated)
    stale = f"creatives/ds={DS}/campaign=retired-campaign/0123456789abcdef0123.png"
    older = f"creatives/ds={DS}/campaign=winter-classics/fedcba98765432100000.png"  # another model version
    for key in (stale, older):
        store.put_bytes(key, b"png")
    events = []

    class Recording(LocalStore):
        def writing(self, key):
            events.append(("write", key))
            return super().writing(key)

        def delete_keys(self, keys):
            events.extend(("delete", key) for key in keys)
            return super().delete_keys(keys)

    monkeypatch.setattr(publish, "open_store", lambda settings: Recording(settings.store_root))
    result = publish_run(generated, DS)
    assert not store.exists(stale) and not store.exists(older) and result["removed_creatives"] == 2
    assert manifests(generated)["image_key"].map(store.exists).all()
    order = [key for _, key in events]
    last_manifest = max(i for i, key in enumerate(order) if key.endswith("manifest.parquet"))
    assert last_manifest < order.index(stale) < order.index(success_key(DS))


def test_docs_list_every_manifest_column_with_its_type():
    import re
    from pathlib import Path

    from pmg_tasks import manifest as contract

    doc = (Path(__file__).resolve().parents[1] / "docs" / "manifest.md").read_text()
    documented = dict(re.findall(r"^\| `(\w+)` \| `([\w<>]+)` \|", doc, flags=re.M))
    assert documented == {name: kind for name, kind, _ in contract.COLUMNS}


def test_a_failed_shard_stops_publishing_and_names_the_shards_unless_publishing_partially(generated):
    from pmg_tasks import manifest as contract
    from pmg_tasks.layout import shard_key
    from pmg_tasks.publish import PublishError

    store = open_store(generated)
    shards = read_json(store, run_key(DS, "stats/plan.json"))["shards"]
    assert shards >= 2, "the demo plan must have several shards for this test"
    # Shard 1's task failed in this run: its result from an earlier attempt is not trusted.
    with pytest.raises(PublishError, match=r"generate shards \[1\] of .*publish_partial"):
        publish_run(generated, DS, failed_shards=[1])
    assert not store.exists(success_key(DS))

    result = publish_run(generated, DS, partial=True, failed_shards=[1])
    lost = set(read_frame(store, shard_key(DS, 1))["signature"])
    requests = read_frame(store, run_key(DS, "requests.parquet"))
    missing = requests[requests["signature"].isin(lost)]
    marker = read_json(store, success_key(DS))
    assert marker["complete"] is False and marker["missing_shards"] == [1] == result["missing_shards"]
    assert len(marker["missing_requests"]) == len(missing) == result["missing_requests"] > 0
    manifest = manifests(generated)
    assert not manifest["signature"].isin(lost).any()
    assert len(manifest) == int(requests.loc[~requests["signature"].isin(lost), "variants"].sum())
    import pyarrow.parquet as pq

    said = []
    for campaign_id in sorted(set(requests["campaign_id"])):
        table = pq.read_table(store.path(manifest_key(DS, campaign_id)))
        said += [(campaign_id, r["user_id"], r["item_id"]) for r in contract.missing_requests(table)]
        assert table.schema.metadata[contract.COMPLETE_KEY] == (b"false" if (missing["campaign_id"] == campaign_id).any() else b"true")
    assert sorted(said) == sorted(zip(missing["campaign_id"], missing["user_id"], missing["item_id"], strict=True))
    # The creatives the partial manifest names stay, and so do those the failed shard recorded earlier: a
    # retried shard trusts its record and would not draw them again.
    recorded = set(read_frame(store, shard_result_key(DS, 1))["image_key"]) - {""}
    assert {k for k in store.list_keys(f"creatives/ds={DS}/")} == set(manifest["image_key"]) | recorded

    # The shard's task is retried and succeeds: the next publish is complete again, every image there.
    from pmg_tasks.generate.shard import generate_shard

    generate_shard(generated, DS, 1)
    again = publish_run(generated, DS)
    assert again["missing_shards"] == [] and read_json(store, success_key(DS))["complete"] is True
    assert manifests(generated)["image_key"].map(store.exists).all()


def test_load_manifest_reads_a_published_date_and_refuses_one_without_its_marker(generated):
    from pmg_tasks.consumers import ManifestNotPublished, load_manifest

    with pytest.raises(ManifestNotPublished, match="nothing was published for that date"):
        load_manifest(DS, settings=generated)
    result = publish_run(generated, DS)
    rows = load_manifest(DS, settings=generated)
    assert len(rows) == result["rows"] and set(rows["ds"]) == {DS} and rows.attrs["complete"] is True
    assert list(rows.columns) == ["ds", *MANIFEST_COLUMNS]
    winter = load_manifest(DS, "winter-classics", settings=generated)
    assert set(winter["campaign_id"]) == {"winter-classics"} and 0 < len(winter) < len(rows)
    with pytest.raises(ManifestNotPublished, match="'spring' published no manifest .* has \\['sci-fi-weekend'"):
        load_manifest(DS, "spring", settings=generated)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        load_manifest("20/11/2026", settings=generated)
    open_store(generated).delete_prefix(success_key(DS))
    with pytest.raises(ManifestNotPublished, match="publishing has not finished"):
        load_manifest(DS, settings=generated)


def test_publish_upserts_the_warehouse_table_and_a_rerun_replaces_its_rows(generated):
    from pmg_tasks.warehouse import connect

    result = publish_run(generated, DS)
    publish_run(generated, DS)
    with connect(generated) as warehouse:
        rows = warehouse.fetch_rows(
            "SELECT count(*), count(DISTINCT (campaign_id, user_id, item_id, rank)) FROM generated_creatives "
            "WHERE ds = CAST(:ds AS DATE)", {"ds": DS},
        )  # fmt: skip
    assert rows == [(result["rows"], result["rows"])]


def test_the_asset_event_says_what_was_published(generated):
    from pmg_tasks.publish import asset_event_extra

    extra = asset_event_extra(publish_run(generated, DS))
    assert extra["ds"] == DS and extra["complete"] is True and extra["missing_requests"] == 0
    assert sorted(extra["manifests"]) == ["sci-fi-weekend", "winter-classics"]
    assert all(uri.startswith("file://") and uri.endswith("manifest.parquet") for uri in extra["manifests"].values())
    assert extra["rows"] == len(manifests(generated)) and extra["distinct_creatives"] > 0 and extra["users"] > 0
    import json

    json.dumps(extra)  # an event's extra must be plain JSON


def test_the_report_is_one_page_with_a_summary_plots_a_capped_grid_and_the_run(generated):
    import base64
    import re

    from pmg_tasks.report import BEST, MAX_FIGURES, WORST
    from pmg_tasks.stage_times import wall_time_key

    store = open_store(generated)
    write_json(store, wall_time_key(DS, "generate", 0), {"seconds": 2.0})
    write_json(store, wall_time_key(DS, "generate", 1), {"seconds": 3.0})
    publish_run(generated, DS)
    page = store.get_bytes(report_key(DS)).decode()
    manifest = manifests(generated)
    validation = read_json(store, run_key(DS, "validation.json"))
    # The summary strip.
    for figure, label in ((validation["extracted"], "events in"), (len(manifest), "creatives published"),
                          ("5.0 s", "generate wall time (2 tasks, longest 3.0 s)")):
        assert re.search(f"<b>{figure}</b><span>{re.escape(label)}", page), label
    assert "keyword cache hit rate" in page and "requested creatives / distinct generations" in page
    # Plots drawn by matplotlib, inline: per campaign and for the run.
    plots = re.findall(r"src='data:image/svg\+xml;base64,([^']+)' alt='([^']+)'", page)
    titles = {alt for _, alt in plots}
    assert {"quarantined events by rule", "generations per segment", "score distributions of winter-classics",
            "score distributions of sci-fi-weekend"} <= titles
    assert all(b"<svg" in base64.b64decode(data) for data, _ in plots)
    # Per campaign: a grid of at most MAX_FIGURES, best z first, images linked beside the page.
    for campaign_id, rows in manifest.groupby("campaign_id"):
        section = page.split(f"id='campaign-{campaign_id}'")[1].split("</section>")[0]
        zs = [float(z) for z in re.findall(r"data-z='([-0-9.]+)'", section)]
        assert 0 < len(zs) <= min(MAX_FIGURES, rows["creative_id"].nunique())
        assert zs[0] == pytest.approx(rows["z"].max(), abs=1e-4)
        assert f"href='../../manifests/ds={DS}/campaign={campaign_id}/manifest.parquet'" in section
        for key in re.findall(r"<img src='\.\./\.\./([^']+)'", section):
            assert store.exists(key)
        assert "tokens: &lt;pref_" in section and "keywords: " in section
    assert BEST + WORST < MAX_FIGURES
    assert "settings profile: <b>test</b>" in page and "diffusion: diffusion-" in page


def test_the_grid_shows_the_best_the_worst_and_a_sample_when_a_campaign_is_large():
    from pmg_tasks.report import BEST, SAMPLE, WORST, pick_creatives

    creatives = pd.DataFrame({"z": np.linspace(0, -1, 100), "creative_id": [f"c{i:03d}" for i in range(100)]})
    picked = pick_creatives(creatives, "big")
    whys = [why for why, _ in picked]
    assert whys.count("best") == BEST and whys.count("worst") == WORST and whys.count("sample") == SAMPLE
    ids = [row.creative_id for _, row in picked]
    assert ids[:BEST] == [f"c{i:03d}" for i in range(BEST)] and ids[-1] == "c099"
    assert len(set(ids)) == len(ids)


def test_held_and_skipped_campaigns_are_on_the_page_but_not_published(generated):
    from pmg_tasks.layout import review_key

    store = open_store(generated)
    plan = read_json(store, run_key(DS, "stats/plan.json"))
    plan["skipped_campaigns"] = [{"file": "spring.yaml", "campaign_id": "spring", "field": "target_items",
                                  "message": "targets items not in the catalog: ['m-nope']", "fix": "fix it"}]
    write_json(store, run_key(DS, "stats/plan.json"), plan)
    publish_run(generated, DS, held=["sci-fi-weekend"])
    page = store.get_bytes(report_key(DS)).decode()
    assert not store.exists(manifest_key(DS, "sci-fi-weekend")) and store.exists(manifest_key(DS, "winter-classics"))
    section = page.split("id='campaign-sci-fi-weekend'")[1].split("</section>")[0]
    assert "class='state held'" in section and "full manifest" not in section and "<figure" in section
    assert "spring.yaml: campaign spring: target_items: targets items not in the catalog" in page.replace("&#x27;", "'")
    write_json(store, review_key(DS, "sci-fi-weekend"), {"state": "rejected", "reviewer": "ana", "comment": "off brand"})
    publish_run(generated, DS, campaigns=[])
    page = store.get_bytes(report_key(DS)).decode()
    assert "class='state rejected'>rejected</span> by ana: off brand" in page
    winter = page.split("id='campaign-winter-classics'")[1].split("</section>")[0]
    assert "class='state'>published" in winter and "full manifest" in winter
    assert store.exists(manifest_key(DS, "winter-classics")) and not store.exists(manifest_key(DS, "sci-fi-weekend"))
