"""The per-user choice on small hand-made score matrices, where the right answer is obvious."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pmg_tasks.generate.choice import (
    SIMILARITY_FLOOR,
    choose_per_user,
    creative_score,
    preference_similarities,
    similarity,
)

# Three users, four candidates. User 0 likes candidate 2 best, user 1 candidate 0, user 2 candidate 3.
D_P = np.array(
    [
        [0.30, 0.40, 0.90, 0.20],
        [0.80, 0.10, 0.20, 0.30],
        [0.50, 0.40, 0.30, 0.95],
    ]
)
# The target item is best shown by candidate 1, then 3.
D_T = np.array([0.20, 0.90, 0.10, 0.60])


def test_alpha_one_gives_every_user_their_own_favourite():
    choice = choose_per_user(D_P, D_T, alpha=1.0, variants=1)
    assert choice.candidates[:, 0].tolist() == [2, 0, 3]


def test_alpha_zero_gives_everyone_the_candidate_that_shows_the_item_best():
    choice = choose_per_user(D_P, D_T, alpha=0.0, variants=2)
    assert choice.candidates.tolist() == [[1, 3], [1, 3], [1, 3]]


def test_variants_are_the_best_in_order_not_the_first():
    choice = choose_per_user(D_P, D_T, alpha=1.0, variants=3)
    assert choice.candidates.tolist() == [[2, 1, 0], [0, 3, 2], [3, 0, 1]]
    assert (np.diff(choice.z, axis=1) <= 0).all()


def test_z_is_pmgs_formula_per_user_and_d_p_is_the_users_own():
    alpha = 0.3
    choice = choose_per_user(D_P, D_T, alpha=alpha, variants=2)
    for user in range(3):
        for rank in range(2):
            candidate = choice.candidates[user, rank]
            expected = alpha * math.log(D_P[user, candidate]) + (1 - alpha) * math.log(D_T[candidate])
            assert choice.z[user, rank] == pytest.approx(expected, abs=1e-12)
            assert choice.d_p[user, rank] == D_P[user, candidate]


def test_mixed_alpha_trades_taste_against_the_item():
    # User 1 loves candidate 0 (0.8) but it shows the item poorly (0.2); candidate 3 is 0.3 and 0.6.
    assert choose_per_user(D_P[1:2], D_T, alpha=0.9, variants=1).candidates[0, 0] == 0
    assert choose_per_user(D_P[1:2], D_T, alpha=0.5, variants=1).candidates[0, 0] == 3


def test_a_consistency_weight_can_change_the_choice_and_zero_keeps_pmgs_z():
    consistency = np.array([0.01, 0.01, 0.01, 0.99])
    plain = choose_per_user(D_P, D_T, alpha=1.0, variants=1, consistency=consistency, consistency_weight=0.0)
    assert plain.candidates[:, 0].tolist() == [2, 0, 3]
    assert plain.z[:, 0] == pytest.approx(np.log(D_P.max(axis=1)))
    weighted = choose_per_user(D_P, D_T, alpha=1.0, variants=1, consistency=consistency, consistency_weight=1.0)
    assert weighted.candidates[:, 0].tolist() == [3, 3, 3]


def test_ties_keep_candidate_order():
    d_p = np.array([[0.5, 0.9, 0.5, 0.9]])
    choice = choose_per_user(d_p, np.ones(4), alpha=1.0, variants=4)
    assert choice.candidates.tolist() == [[1, 3, 0, 2]]


def test_one_matrix_product_gives_every_users_similarities():
    users = np.array([[1.0, 0.0], [0.0, 1.0]])
    candidates = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    assert preference_similarities(users, candidates).tolist() == [[1.0, SIMILARITY_FLOOR, 0.5], [0.5, 0.5, 1.0]]


def test_similarity_maps_cosines_into_zero_one_with_a_floor_that_keeps_z_finite():
    assert similarity(np.array([1.0, 0.0, -1.0])).tolist() == [1.0, 0.5, SIMILARITY_FLOOR]
    assert math.isfinite(float(creative_score(SIMILARITY_FLOOR, 1.0, 0.5)))
    assert float(creative_score(1.0, 1.0, 0.7)) == 0.0


@pytest.mark.parametrize(
    ("d_p", "d_t", "variants", "message"),
    [
        (D_P, D_T[:3], 1, "d_p must be"),
        (D_P[0], D_T, 1, "d_p must be"),
        (D_P, D_T, 5, "variants must lie in"),
        (D_P, D_T, 0, "variants must lie in"),
    ],
)
def test_bad_shapes_are_refused(d_p, d_t, variants, message):
    with pytest.raises(ValueError, match=message):
        choose_per_user(d_p, d_t, alpha=0.5, variants=variants)
