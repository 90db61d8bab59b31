"""The generate + score + choose stage end to end on a local store, with the test-size models.

Scores are checked against the models themselves: a stored image, scored again against the user's own
preference text and the target's text, must give the recorded d_p and d_t; every candidate, drawn again from
its recorded seed, must lose to what each user was given.
"""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pmg_tasks import layout
from pmg_tasks.generate import generate_shard
from pmg_tasks.generate.creatives import PersonalizedCreatives
from pmg_tasks.generate.scoring import ClipScorer
from pmg_tasks.generate.shard import candidate_seeds
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
        "negative_prompt": ["blurry, low quality", "blurry", ""],
        "target_text": ["red summer dress", "white sneakers", "coffee beans, ceramic mug"],
        "target_image_key": ["", "", ""],
        "alpha": [1.0, 0.5, 0.0],
        "consistency_weight": [0.0, 0.0, 0.5],
        "candidates": [8, 3, 2],
        "variants": [1, 2, 1],
    }
)
# Six users share the dress (a segment), two the sneakers, one the coffee; their tastes differ.
AUDIENCE = pd.DataFrame(
    [
        ("sig-red-dress", f"u{i}", text)
        for i, text in enumerate(
            # Tastes the test-size CLIP tells apart: each prefers another of the dress's candidates.
            ["studio lighting", "blue sky", "bold typography", "rustic wooden table", "romance",
             "soft pastel colors"]
        )
    ]
    + [("sig-sneakers", "u0", "bold colors, vintage"), ("sig-sneakers", "u7", "green forest, blue sky")]
    + [("sig-coffee", "u8", "healthy lifestyle")],
    columns=["signature", "user_id", "preference_text"],
)  # fmt: skip
HEADLINES = pd.DataFrame(
    {"signature": REQUESTS["signature"], "headline": ["Red for you", "Step out clean", "Morning, brewed"],
     "source": "template"}  # fmt: skip
)


def shard_settings(home: Path, models: ModelPaths, **generation) -> Settings:
    options = {"image_size": IMAGE_SIZE, "batch_size": 4, "inference_steps": 2, **generation}
    return Settings(home=home, models=models, generation=Generation(**options))


def write_inputs(settings: Settings, requests=REQUESTS, audience=AUDIENCE, headlines=HEADLINES) -> None:
    store = open_store(settings)
    write_table(store, layout.shard_key(DS, SHARD), requests)
    write_table(store, layout.shard_audience_key(DS, SHARD), audience)
    write_table(store, layout.run_key(DS, "headlines.parquet"), headlines)


def result_of(settings: Settings) -> pd.DataFrame:
    return read_frame(open_store(settings), layout.shard_result_key(DS, SHARD))


def copy_of(settings: Settings, tmp_path: Path, **generation) -> Settings:
    """Settings over a copy of a finished run's store, so a test can change it freely."""
    shutil.copytree(settings.home, tmp_path / "copy")
    return shard_settings(tmp_path / "copy", settings.models, **generation)


@pytest.fixture(scope="module")
def first_run(test_size_models: ModelPaths, tmp_path_factory: pytest.TempPathFactory):
    """One shard generated from scratch: its settings, summary and result table."""
    settings = shard_settings(tmp_path_factory.mktemp("pmg"), test_size_models)
    write_inputs(settings)
    summary = generate_shard(settings, DS, SHARD)
    return settings, summary, result_of(settings)


@pytest.fixture(scope="module")
def models(test_size_models: ModelPaths):
    """The same models the shard loads, to score and draw again."""
    generation = Generation(image_size=IMAGE_SIZE, batch_size=4, inference_steps=2)
    return PersonalizedCreatives.from_models(test_size_models.diffusion, test_size_models.clip, generation)


def test_every_user_gets_their_variants_ranked(first_run):
    _, summary, result = first_run
    expected_rows = sum(
        REQUESTS.set_index("signature").at[signature, "variants"] for signature in AUDIENCE["signature"]
    )
    assert len(result) == summary["choices"] == expected_rows
    for (signature, _user), rows in result.groupby(["signature", "user_id"]):
        variants = REQUESTS.set_index("signature").at[signature, "variants"]
        assert rows["rank"].tolist() == list(range(1, variants + 1))
        assert rows["z"].is_monotonic_decreasing
        assert rows["creative_id"].is_unique
    assert set(zip(result["signature"], result["user_id"], strict=True)) == set(
        zip(AUDIENCE["signature"], AUDIENCE["user_id"], strict=True)
    )
    assert (summary["requests"], summary["generated"], summary["skipped"]) == (3, 3, 0)


def test_a_shared_creative_is_stored_once_and_carries_its_seed_and_scores(first_run):
    from PIL import Image

    settings, summary, result = first_run
    store = open_store(settings)
    written = [k for k in store.list_keys(layout.creatives_prefix(DS)) if k.endswith(".png")]
    assert sorted(written) == sorted(result["image_key"].unique())
    assert summary["creatives"] == len(written) < len(result)
    for row in result.drop_duplicates("creative_id").itertuples():
        assert row.image_key == layout.creative_key(DS, row.campaign_id, row.creative_id)
        with Image.open(io.BytesIO(store.get_bytes(row.image_key))) as image:
            assert image.format == "PNG" and image.size == (IMAGE_SIZE, IMAGE_SIZE)
            text = dict(image.text)
        assert (text["signature"], int(text["seed"]), int(text["candidate"])) == (row.signature, row.seed, row.candidate)
        assert (float(text["d_t"]), float(text["consistency"])) == (row.d_t, row.consistency)


def test_recorded_scores_are_the_users_own_d_p_and_the_targets_d_t(first_run, test_size_models):
    """Scoring a stored image again against the user's text gives d_p, against the target's text d_t."""
    from PIL import Image

    settings, _, result = first_run
    store = open_store(settings)
    scorer = ClipScorer.load(Path(test_size_models.clip))
    texts = AUDIENCE.set_index(["signature", "user_id"])["preference_text"]
    targets = REQUESTS.set_index("signature")["target_text"]
    images = [Image.open(io.BytesIO(store.get_bytes(key))).convert("RGB") for key in result["image_key"]]
    d_p = scorer.similarities(images, [texts[(s, u)] for s, u in zip(result["signature"], result["user_id"], strict=True)])
    d_t = scorer.similarities(images, [targets[s] for s in result["signature"]])
    # PNG round trips are lossless; batched and single CLIP passes agree to float32 rounding.
    assert result["d_p"].to_numpy() == pytest.approx(d_p, abs=2e-3)
    assert result["d_t"].to_numpy() == pytest.approx(d_t, abs=2e-3)


def test_z_follows_the_pmg_formula_with_the_consistency_weight(first_run):
    _, _, result = first_run
    recipe = REQUESTS.set_index("signature")
    for row in result.itertuples():
        alpha, weight = recipe.at[row.signature, "alpha"], recipe.at[row.signature, "consistency_weight"]
        expected = alpha * math.log(row.d_p) + (1 - alpha) * math.log(row.d_t) + weight * math.log(row.consistency)
        assert row.z == pytest.approx(expected, abs=1e-12)


def test_each_user_gets_their_own_best_of_every_candidate_drawn_again(first_run, models):
    """Draw all k candidates again from their seeds and score them: no user's creative loses to another."""
    _, _, result = first_run
    own_best_differ = False
    for request in REQUESTS.itertuples():
        seeds = candidate_seeds(_request(request))
        images = models.draw([(request.prompt, request.negative_prompt)] * len(seeds), seeds)
        candidate_rows = models.scorer.image_embeddings(images)
        d_t = models.target_similarities(_request(request), candidate_rows, None)
        [headline_row] = models.scorer.text_embeddings([HEADLINES.set_index("signature").at[request.signature, "headline"]])
        consistency = (1 + candidate_rows @ headline_row) / 2
        users = AUDIENCE[AUDIENCE["signature"] == request.signature]
        user_rows = models.scorer.text_embeddings(users["preference_text"].tolist())
        d_p = (1 + user_rows @ candidate_rows.T) / 2
        z = (request.alpha * np.log(d_p) + (1 - request.alpha) * np.log(d_t)
             + request.consistency_weight * np.log(consistency))  # fmt: skip
        ranked = -np.sort(-z, axis=1)
        for row, user_id in enumerate(users["user_id"]):
            chosen = result[(result["signature"] == request.signature) & (result["user_id"] == user_id)]
            # The r-th creative a user got is as good as their r-th best candidate (up to float rounding of
            # a differently batched draw).
            for rank, candidate in enumerate(chosen.sort_values("rank")["candidate"]):
                assert z[row, candidate] >= ranked[row, rank] - 1e-4, (user_id, rank, z[row])
        own_best_differ |= len(set(z.argmax(axis=1).tolist())) > 1
    # The check above means something only if users of one request do prefer different candidates.
    assert own_best_differ


def test_rerun_reads_the_record_and_draws_nothing(first_run, tmp_path):
    settings, _, result = first_run
    rerun = copy_of(settings, tmp_path)
    summary = generate_shard(rerun, DS, SHARD)
    assert (summary["generated"], summary["skipped"]) == (0, 3)
    pd.testing.assert_frame_equal(result_of(rerun), result)


def test_a_recorded_request_whose_image_is_gone_is_drawn_again(first_run, tmp_path):
    """An image the record names was removed since (a republish without its campaign, a hand clean-up):
    the rerun draws that request again, the others not, and every image the result names exists."""
    settings, _, result = first_run
    rerun = copy_of(settings, tmp_path)
    store = open_store(rerun)
    gone = result.loc[result["signature"] == "sig-sneakers", "image_key"].iloc[0]
    Path(store.root, gone).unlink()
    summary = generate_shard(rerun, DS, SHARD)
    assert (summary["generated"], summary["skipped"]) == (1, 2)
    assert store.exists(gone)
    pd.testing.assert_frame_equal(result_of(rerun)[["creative_id", "image_key"]], result[["creative_id", "image_key"]])


def test_a_retry_after_a_crash_resumes_from_the_record(first_run, tmp_path, monkeypatch):
    """The first attempt dies after recording one request; the retry draws only the other two, and the
    result is the one an uninterrupted shard writes."""
    import pmg_tasks.generate.shard as shard_module

    settings, _, result = first_run
    fresh = shard_settings(tmp_path / "fresh", settings.models, checkpoint_requests=1)
    write_inputs(fresh)
    real_write = shard_module.write_chosen
    written = []

    def die_on_the_second(*args, **kwargs):
        if written:
            raise RuntimeError("worker lost")
        written.append(args[2].request.signature)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(shard_module, "write_chosen", die_on_the_second)
    with pytest.raises(RuntimeError, match="worker lost"):
        generate_shard(fresh, DS, SHARD)
    store = open_store(fresh)
    assert len(store.list_keys(layout.shard_record_prefix(DS, SHARD))) == 1
    monkeypatch.setattr(shard_module, "write_chosen", real_write)

    summary = generate_shard(fresh, DS, SHARD)
    assert (summary["generated"], summary["skipped"]) == (2, 1)
    again = result_of(fresh)
    identity = ["signature", "user_id", "rank", "candidate", "creative_id", "image_key", "seed"]
    pd.testing.assert_frame_equal(again[identity], result[identity])
    pd.testing.assert_frame_equal(again[["d_p", "d_t", "z"]], result[["d_p", "d_t", "z"]], atol=1e-4)
    assert store.list_keys(layout.shard_record_prefix(DS, SHARD)) == []


def test_a_new_user_in_a_segment_redraws_only_that_request(first_run, tmp_path):
    settings, _, result = first_run
    rerun = copy_of(settings, tmp_path)
    grown = pd.concat([AUDIENCE, pd.DataFrame([("sig-coffee", "u9", "cozy wool sweater")], columns=AUDIENCE.columns)])
    write_inputs(rerun, audience=grown)
    summary = generate_shard(rerun, DS, SHARD)
    assert (summary["generated"], summary["skipped"]) == (1, 2)
    again = result_of(rerun)
    assert set(again.loc[again["signature"] == "sig-coffee", "user_id"]) == {"u8", "u9"}
    unchanged = again[again["signature"] != "sig-coffee"].reset_index(drop=True)
    pd.testing.assert_frame_equal(unchanged, result[result["signature"] != "sig-coffee"].reset_index(drop=True))


def test_an_empty_shard_writes_an_empty_result(test_size_models, tmp_path):
    settings = shard_settings(tmp_path / "pmg", test_size_models)
    write_inputs(settings, REQUESTS.iloc[:0], AUDIENCE.iloc[:0], HEADLINES.iloc[:0])
    summary = generate_shard(settings, DS, SHARD)
    assert (summary["requests"], summary["choices"]) == (0, 0)
    assert "user_id" in result_of(settings).columns


def test_a_request_without_a_headline_names_the_task_to_run(test_size_models, tmp_path):
    settings = shard_settings(tmp_path / "pmg", test_size_models)
    write_inputs(settings, headlines=HEADLINES.iloc[:1])
    with pytest.raises(ValueError, match="have no headline.*run the headlines task"):
        generate_shard(settings, DS, SHARD)


def test_a_request_without_users_is_refused(test_size_models, tmp_path):
    settings = shard_settings(tmp_path / "pmg", test_size_models)
    write_inputs(settings, audience=AUDIENCE[AUDIENCE["signature"] != "sig-coffee"])
    with pytest.raises(ValueError, match="no users for 1 requests.*rerun the plan stage"):
        generate_shard(settings, DS, SHARD)


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
    write_inputs(settings)
    with pytest.raises(error, match=says):
        generate_shard(settings, DS, SHARD)


def test_a_directory_without_a_model_names_the_fix(test_size_models, tmp_path):
    models = test_size_models.model_copy(update={"clip": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="has no config.json.*PMG_MODELS__CLIP"):
        generate_shard(shard_settings(tmp_path / "pmg", models), DS, SHARD)


def test_more_variants_than_candidates_is_refused(test_size_models, tmp_path):
    settings = shard_settings(tmp_path / "pmg", test_size_models)
    write_inputs(settings, REQUESTS.assign(variants=[9, 2, 1]))
    with pytest.raises(ValueError, match="sig-red-dress: needs 1 <= variants <= candidates"):
        generate_shard(settings, DS, SHARD)


def _request(row):
    from pmg_tasks.generate.creatives import GenerationRequest

    return GenerationRequest(
        signature=row.signature, campaign_id=row.campaign_id, prompt=row.prompt,
        negative_prompt=row.negative_prompt, target_text=row.target_text, headline="", alpha=row.alpha,
        consistency_weight=row.consistency_weight, candidates=row.candidates, variants=row.variants,
    )  # fmt: skip

