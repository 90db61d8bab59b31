import re

import pytest
import torch

from pmg_tasks.preferences.quantize import (
    align_codes,
    assign_codes,
    fit_residual_codebooks,
    preference_tokens,
    reconstruct,
    reconstruction_error,
    segment_id,
)


@pytest.fixture
def preferences():
    """Unit vectors around six directions, like users' tastes."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 16, generator=generator)
    members = centres.repeat_interleave(30, dim=0) + 0.3 * torch.randn(180, 16, generator=generator)
    return torch.nn.functional.normalize(members, dim=1)


def test_codes_are_in_range(preferences):
    codebooks = fit_residual_codebooks(preferences, levels=3, codes=8, seed=0)
    codes = assign_codes(preferences, codebooks)

    assert codebooks.shape == (3, 8, 16)
    assert codes.shape == (180, 3)
    assert codes.min() >= 0 and codes.max() < 8


def test_error_decreases_with_more_levels(preferences):
    errors = [
        reconstruction_error(preferences, fit_residual_codebooks(preferences, levels, 8, seed=0))
        for levels in (1, 2, 3)
    ]

    assert errors[0] > errors[1] > errors[2]
    assert errors[0] < 0.5, "one level of 8 codes already explains most of six clusters"


def test_reconstruction_sums_the_chosen_centroids(preferences):
    codebooks = fit_residual_codebooks(preferences, levels=2, codes=4, seed=0)
    codes = assign_codes(preferences, codebooks)

    expected = codebooks[0][codes[:, 0]] + codebooks[1][codes[:, 1]]
    torch.testing.assert_close(reconstruct(codes, codebooks), expected)


def test_same_seed_same_codebooks(preferences):
    first = fit_residual_codebooks(preferences, levels=2, codes=8, seed=5)
    second = fit_residual_codebooks(preferences, levels=2, codes=8, seed=5)

    assert torch.equal(first, second)


def test_warm_start_from_converged_codebooks_keeps_every_code(preferences):
    codebooks = fit_residual_codebooks(preferences, levels=2, codes=8, seed=0, iterations=100)
    again = fit_residual_codebooks(preferences, levels=2, codes=8, seed=99, init=codebooks)

    assert torch.equal(assign_codes(preferences, again), assign_codes(preferences, codebooks))


def test_fewer_users_than_codes_still_quantize():
    vectors = torch.nn.functional.normalize(
        torch.randn(3, 8, generator=torch.Generator().manual_seed(0)), dim=1
    )
    codebooks = fit_residual_codebooks(vectors, levels=2, codes=8, seed=0)

    assert reconstruction_error(vectors, codebooks) < 1e-9


def test_init_of_the_wrong_shape_is_refused(preferences):
    with pytest.raises(ValueError, match="initial codebooks"):
        fit_residual_codebooks(preferences, levels=2, codes=8, seed=0, init=torch.zeros(2, 4, 16))


def test_tokens_and_segments():
    tokens = preference_tokens(torch.tensor([[5, 2], [5, 2], [0, 7]]), "txt")

    assert tokens[0] == ["<pref_txt_0_5>", "<pref_txt_1_2>"]
    assert all(re.fullmatch(r"<pref_txt_\d+_\d+>", token) for row in tokens for token in row)
    assert segment_id(tokens[0]) == segment_id(tokens[1]) != segment_id(tokens[2])
    assert re.fullmatch(r"[0-9a-f]{12}", segment_id(tokens[0]))


def test_alignment_renumbers_codes_to_last_nights_and_keeps_the_quantizer(preferences):
    codebooks = fit_residual_codebooks(preferences, levels=2, codes=8, seed=0)
    codes = assign_codes(preferences, codebooks)
    # Last night the same users had the same groups under other numbers.
    renumber = torch.tensor([3, 7, 0, 1, 6, 2, 5, 4])
    previous = renumber[codes]
    aligned_books, aligned = align_codes(codebooks, codes, previous)

    assert torch.equal(aligned, previous)
    assert torch.equal(assign_codes(preferences, aligned_books), aligned)
    torch.testing.assert_close(reconstruct(aligned, aligned_books), reconstruct(codes, codebooks))


def test_alignment_without_overlap_keeps_every_code_distinct(preferences):
    codebooks = fit_residual_codebooks(preferences, levels=1, codes=8, seed=0)
    codes = assign_codes(preferences, codebooks)
    aligned_books, aligned = align_codes(codebooks, codes, torch.zeros_like(codes))

    assert torch.unique(aligned_books[0], dim=0).shape[0] == 8
    # the biggest group takes last night's only code
    assert aligned[codes[:, 0] == torch.mode(codes[:, 0]).values, 0].eq(0).all()
