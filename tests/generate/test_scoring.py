"""CLIP embeddings with the test-size CLIP, whose projection (24) is narrower than its towers (32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pmg_tasks.generate.choice import SIMILARITY_FLOOR
from pmg_tasks.generate.scoring import ClipScorer
from pmg_tasks.models.test_size import CLIP_PROJECTION_DIM
from pmg_tasks.settings import ModelPaths

PREFERENCE = "bold colors, vintage style, leather"
TARGET = "white sneakers, clean design"


@pytest.fixture(scope="module")
def scorer(test_size_models: ModelPaths) -> ClipScorer:
    return ClipScorer.load(Path(test_size_models.clip))


@pytest.fixture(scope="module")
def images():
    from PIL import Image

    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(8)]


def test_embeddings_are_unit_rows_in_the_projected_space(scorer: ClipScorer, images):
    assert scorer.model.config.projection_dim != scorer.model.config.text_config.hidden_size
    image_rows = scorer.image_embeddings(images)
    text_rows = scorer.text_embeddings([PREFERENCE, TARGET])
    assert image_rows.shape == (8, CLIP_PROJECTION_DIM) and text_rows.shape == (2, CLIP_PROJECTION_DIM)
    assert np.linalg.norm(image_rows, axis=1) == pytest.approx(1.0, abs=1e-5)
    assert np.linalg.norm(text_rows, axis=1) == pytest.approx(1.0, abs=1e-5)


def test_a_repeated_text_is_encoded_once_and_keeps_its_place(scorer: ClipScorer):
    rows = scorer.text_embeddings([TARGET, PREFERENCE, TARGET])
    assert rows[0] == pytest.approx(rows[2])
    assert rows[0] == pytest.approx(scorer.text_embeddings([TARGET])[0], abs=1e-5)
    assert not np.allclose(rows[0], rows[1])


def test_each_image_is_scored_against_its_own_text(scorer: ClipScorer, images):
    texts = [PREFERENCE, TARGET, PREFERENCE, "a gift box"]
    together = scorer.similarities(images[:4], texts)
    one_by_one = [scorer.similarities([image], [text])[0] for image, text in zip(images[:4], texts, strict=True)]
    assert together == pytest.approx(one_by_one, abs=1e-5)
    assert ((together >= SIMILARITY_FLOOR) & (together <= 1.0)).all()


def test_nothing_in_nothing_out(scorer: ClipScorer):
    assert scorer.image_embeddings([]).shape == (0, CLIP_PROJECTION_DIM)
    assert scorer.text_embeddings([]).shape == (0, CLIP_PROJECTION_DIM)
