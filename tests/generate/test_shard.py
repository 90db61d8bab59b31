"""The generate + score stage end to end on a local store, with the test-size models."""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pmg_tasks import layout
from pmg_tasks.generate import generate_shard
from pmg_tasks.generate.shard import candidate_seed, creative_id
from pmg_tasks.models import model_version
from pmg_tasks.settings import Generation, ModelPaths, Settings
from pmg_tasks.store import open_store, read_frame, write_table

DS = "2026-11-20"
SHARD = 3
IMAGE_SIZE = 32
REQUESTS = pd.DataFrame(
    {
        "signature": ["sig-red-dress", "sig-sneakers", "sig-coffee"],
        "campaign_id": ["spring", "spring", "breakfast"],
        "prompt": [
            "a photo of a red summer dress, bold colors, vintage style",
            "minimalist white sneakers, clean design, soft pastel colors",
            "fresh organic coffee beans, ceramic mug, bright kitchen",
        ],
        "preference_text": ["bold colors, vintage", "soft pastel colors, clean design", "healthy lifestyle"],
        "target_text": ["red summer dress", "white sneakers", "coffee beans, ceramic mug"],
        "alpha": [0.5, 1.0, 0.0],
        "candidates": [2, 3, 1],
        "variants": [1, 2, 1],
    }
)


def shard_settings(home: Path, models: ModelPaths) -> Settings:
    generation = Generation(image_size=IMAGE_SIZE, batch_size=4, inference_steps=2)
    return Settings(home=home, models=models, generation=generation)


def write_requests(settings: Settings, requests: pd.DataFrame = REQUESTS) -> None:
    write_table(open_store(settings), layout.shard_key(DS, SHARD), requests)


def result_of(settings: Settings) -> pd.DataFrame:
    return read_frame(open_store(settings), layout.shard_result_key(DS, SHARD))


def rerun_on_a_copy(home: Path, tmp_path: Path, models: ModelPaths) -> Settings:
    """Settings over a copy of a finished run's store, so a test can change it freely."""
    shutil.copytree(home, tmp_path / "copy")
    return shard_settings(tmp_path / "copy", models)


@pytest.fixture(scope="module")
def first_run(test_size_models: ModelPaths, tmp_path_factory: pytest.TempPathFactory):
    """One shard generated from scratch: its settings, summary and result table."""
    settings = shard_settings(tmp_path_factory.mktemp("pmg"), test_size_models)
    write_requests(settings)
    summary = generate_shard(settings, DS, SHARD)
    return settings, summary, result_of(settings)


def test_summary_counts_requests_and_creatives(first_run):
    _, summary, result = first_run
    assert summary == {
        "shard": SHARD,
        "requests": 3,
        "creatives": int(REQUESTS["variants"].sum()),
        "generated": 3,
        "skipped": 0,
        "result_key": layout.shard_result_key(DS, SHARD),
    }
    assert len(result) == REQUESTS["variants"].sum()


def test_kept_images_are_pngs_of_the_requested_size_carrying_their_scores(first_run):
    from PIL import Image

    settings, _, result = first_run
    store = open_store(settings)
    for row in result.itertuples():
        assert row.image_key == layout.creative_key(DS, row.campaign_id, row.creative_id)
        with Image.open(io.BytesIO(store.get_bytes(row.image_key))) as image:
            assert image.format == "PNG"
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
            text = dict(image.text)
        assert text["signature"] == row.signature
        assert int(text["seed"]) == row.seed and int(text["rank"]) == row.rank
        assert [float(text[name]) for name in ("d_p", "d_t", "z")] == [row.d_p, row.d_t, row.z]


def test_each_request_keeps_its_best_v_ranked_by_z(first_run):
    _, _, result = first_run
    for request in REQUESTS.itertuples():
        kept = result[result["signature"] == request.signature]
        assert kept["rank"].tolist() == list(range(1, request.variants + 1))
        assert kept["z"].is_monotonic_decreasing
        assert (kept["candidates"] == request.candidates).all()
        assert (kept["campaign_id"] == request.campaign_id).all()


def test_z_follows_the_pmg_formula(first_run):
    _, _, result = first_run
    alpha = result["signature"].map(REQUESTS.set_index("signature")["alpha"])
    for row, a in zip(result.itertuples(), alpha, strict=True):
        assert 0.0 < row.d_p <= 1.0 and 0.0 < row.d_t <= 1.0
        assert row.z == pytest.approx(a * math.log(row.d_p) + (1 - a) * math.log(row.d_t), abs=1e-12)


def test_seeds_and_creative_ids_are_recorded_and_derived_from_the_request(first_run, test_size_models):
    _, _, result = first_run
    versions = model_version(test_size_models.diffusion), model_version(test_size_models.clip)
    for row in result.itertuples():
        k = int(REQUESTS.set_index("signature").loc[row.signature, "candidates"])
        assert row.seed in {candidate_seed(row.signature, index) for index in range(k)}
        assert row.creative_id == creative_id(row.signature, row.seed, *versions)
    assert result["creative_id"].is_unique


def test_a_recorded_seed_draws_the_same_image_again(first_run, test_size_models):
    import numpy as np
    from PIL import Image

    from pmg_tasks.generate.pipeline import inference_device, load_diffusion_pipeline, render_images

    settings, _, result = first_run
    row = result.iloc[0]
    prompt = REQUESTS.set_index("signature").loc[row["signature"], "prompt"]
    pipeline = load_diffusion_pipeline(Path(test_size_models.diffusion), *inference_device())
    [again] = render_images(pipeline, [prompt], [int(row["seed"])], settings.generation)
    with Image.open(io.BytesIO(open_store(settings).get_bytes(row["image_key"]))) as stored:
        difference = np.abs(np.asarray(again, dtype=int) - np.asarray(stored.convert("RGB"), dtype=int))
    # Batched and single convolutions may round differently in the last bit: pixels agree within one step.
    assert difference.max() <= 1


def test_rerun_skips_every_request_and_writes_the_same_result(first_run, test_size_models, tmp_path):
    settings, _, result = first_run
    rerun = rerun_on_a_copy(settings.home, tmp_path, test_size_models)
    summary = generate_shard(rerun, DS, SHARD)
    assert (summary["generated"], summary["skipped"]) == (0, 3)
    pd.testing.assert_frame_equal(result_of(rerun), result)


def test_rerun_after_losing_one_image_draws_only_that_request(first_run, test_size_models, tmp_path):
    settings, _, result = first_run
    rerun = rerun_on_a_copy(settings.home, tmp_path, test_size_models)
    lost = result[result["signature"] == "sig-sneakers"].iloc[0]
    store = open_store(rerun)
    store.delete_prefix(lost["image_key"])

    summary = generate_shard(rerun, DS, SHARD)
    assert (summary["generated"], summary["skipped"]) == (1, 2)
    assert store.exists(lost["image_key"])
    again = result_of(rerun)
    identity = ["signature", "campaign_id", "creative_id", "image_key", "seed", "rank", "candidates"]
    pd.testing.assert_frame_equal(again[identity], result[identity])
    pd.testing.assert_frame_equal(again[["d_p", "d_t", "z"]], result[["d_p", "d_t", "z"]], atol=1e-4)


def test_an_empty_shard_writes_an_empty_result(test_size_models, tmp_path):
    settings = shard_settings(tmp_path / "pmg", test_size_models)
    write_requests(settings, REQUESTS.iloc[:0])
    summary = generate_shard(settings, DS, SHARD)
    assert (summary["requests"], summary["creatives"]) == (0, 0)
    assert list(result_of(settings).columns) == [
        "signature",
        "campaign_id",
        "creative_id",
        "image_key",
        "seed",
        "rank",
        "d_p",
        "d_t",
        "z",
        "candidates",
    ]


@pytest.mark.parametrize(
    ("diffusion", "error", "says"),
    [
        ("", ValueError, "settings.models.diffusion is empty: set PMG_MODELS__DIFFUSION"),
        ("/nowhere/diffusion", FileNotFoundError, "pmg models build-test-size --out DIR"),
    ],
)
def test_a_missing_model_path_names_the_fix(test_size_models, tmp_path, diffusion, error, says):
    models = test_size_models.model_copy(update={"diffusion": diffusion})
    settings = shard_settings(tmp_path / "pmg", models)
    write_requests(settings)
    with pytest.raises(error, match=says):
        generate_shard(settings, DS, SHARD)


def test_a_directory_without_a_model_names_the_fix(test_size_models, tmp_path):
    models = test_size_models.model_copy(update={"clip": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="has no config.json.*PMG_MODELS__CLIP"):
        generate_shard(shard_settings(tmp_path / "pmg", models), DS, SHARD)


def test_more_variants_than_candidates_is_refused(test_size_models, tmp_path):
    settings = shard_settings(tmp_path / "pmg", test_size_models)
    write_requests(settings, REQUESTS.assign(variants=[3, 2, 1]))
    with pytest.raises(ValueError, match="sig-red-dress: needs 1 <= variants <= candidates"):
        generate_shard(settings, DS, SHARD)
