"""CLIP scoring and PMG's z, with the test-size CLIP."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pmg_tasks.generate.scoring import (
    SIMILARITY_FLOOR,
    CandidateScore,
    ClipScorer,
    creative_score,
    rank_by_z,
)
from pmg_tasks.settings import ModelPaths

PREFERENCE = "bold colors, vintage style, leather"
TARGET = "white sneakers, clean design"


@pytest.fixture(scope="module")
def scorer(test_size_models: ModelPaths) -> ClipScorer:
    return ClipScorer.load(Path(test_size_models.clip))


@pytest.fixture(scope="module")
def images():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(8)]


def scores_for(scorer: ClipScorer, images, alpha: float) -> list[CandidateScore]:
    n = len(images)
    return scorer.score(images, [PREFERENCE] * n, [TARGET] * n, [alpha] * n)


def test_scores_are_finite_and_in_range(scorer: ClipScorer, images):
    for score in scores_for(scorer, images, alpha=0.5):
        assert SIMILARITY_FLOOR <= score.d_p <= 1.0
        assert SIMILARITY_FLOOR <= score.d_t <= 1.0
        assert math.isfinite(score.z) and score.z <= 0.0


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_z_follows_the_pmg_formula(scorer: ClipScorer, images, alpha: float):
    for score in scores_for(scorer, images, alpha):
        expected = alpha * math.log(score.d_p) + (1 - alpha) * math.log(score.d_t)
        assert score.z == pytest.approx(expected, abs=1e-12)


def test_alpha_one_ranks_by_preference_only(scorer: ClipScorer, images):
    scores = scores_for(scorer, images, alpha=1.0)
    assert rank_by_z(scores) == sorted(range(len(scores)), key=lambda i: -scores[i].d_p)


def test_alpha_zero_ranks_by_target_only(scorer: ClipScorer, images):
    scores = scores_for(scorer, images, alpha=0.0)
    assert rank_by_z(scores) == sorted(range(len(scores)), key=lambda i: -scores[i].d_t)


def test_each_image_is_scored_against_its_own_text(scorer: ClipScorer, images):
    texts = [PREFERENCE, TARGET, PREFERENCE, "a gift box"]
    together = scorer.similarities(images[:4], texts)
    one_by_one = [
        scorer.similarities([image], [text])[0] for image, text in zip(images[:4], texts, strict=True)
    ]
    assert together == pytest.approx(one_by_one, abs=1e-5)


def test_a_similarity_at_the_floor_keeps_z_finite():
    assert math.isfinite(creative_score(SIMILARITY_FLOOR, 1.0, 0.5))
    assert creative_score(1.0, 1.0, 0.7) == 0.0


def test_ties_keep_generation_order():
    scores = [CandidateScore(0.5, 0.5, -1.0), CandidateScore(0.9, 0.9, -0.1), CandidateScore(0.5, 0.5, -1.0)]
    assert rank_by_z(scores) == [1, 0, 2]
