"""Residual quantization of preference embeddings into discrete preference tokens (DPPMG).

Level 0 clusters the embeddings with k-means; every further level clusters what the levels before it left
unexplained (the residual). A user's tokens are the code chosen at each level, e.g. `<pref_txt_0_5>`,
`<pref_txt_1_2>`: coarse taste first, refinements after. Starting k-means from last night's codebooks keeps
code numbers meaning the same thing from one night to the next.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor


def fit_residual_codebooks(
    vectors: Tensor,
    levels: int,
    codes: int,
    *,
    seed: int,
    init: Tensor | None = None,
    iterations: int = 25,
) -> Tensor:
    """Codebooks `[levels, codes, dim]` fitted by k-means on each level's residual.

    With `init` (earlier codebooks of the same shape) each level starts from its old centroids instead of
    a seeded k-means++ draw. The same vectors, seed and init always give the same codebooks.
    """
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"quantization needs a non-empty [n, dim] matrix, got shape {tuple(vectors.shape)}")
    if init is not None and tuple(init.shape) != (levels, codes, vectors.shape[1]):
        raise ValueError(
            f"initial codebooks have shape {tuple(init.shape)}, need {(levels, codes, vectors.shape[1])}"
        )
    generator = torch.Generator().manual_seed(seed)
    residual = vectors.detach().double()
    codebooks = []
    for level in range(levels):
        start = init[level].double() if init is not None else _kmeans_plus_plus(residual, codes, generator)
        centroids = _kmeans(residual, start, iterations)
        codebooks.append(centroids)
        residual = residual - centroids[_nearest(residual, centroids)]
    return torch.stack(codebooks).to(vectors.dtype)


def assign_codes(vectors: Tensor, codebooks: Tensor) -> Tensor:
    """The code `[n, levels]` chosen at each level: the centroid nearest to what is left of each vector."""
    residual = vectors.detach().double()
    chosen = []
    for centroids in codebooks.double():
        nearest = _nearest(residual, centroids)
        chosen.append(nearest)
        residual = residual - centroids[nearest]
    return torch.stack(chosen, dim=1)


def reconstruct(codes: Tensor, codebooks: Tensor) -> Tensor:
    """The sum over levels of each row's chosen centroids."""
    return sum(codebooks[level][codes[:, level]] for level in range(codebooks.shape[0]))


def reconstruction_error(vectors: Tensor, codebooks: Tensor) -> float:
    """Squared error of the quantized vectors relative to the vectors' own energy (0 = exact, 1 = nothing)."""
    approximation = reconstruct(assign_codes(vectors, codebooks), codebooks).double()
    original = vectors.detach().double()
    energy = original.pow(2).sum()
    return float((original - approximation).pow(2).sum() / energy) if energy > 0 else 0.0


def preference_tokens(codes: Tensor, view: str) -> list[list[str]]:
    """Token strings of each row of `codes`: `<pref_{view}_{level}_{code}>` per level."""
    return [[f"<pref_{view}_{level}_{code}>" for level, code in enumerate(row)] for row in codes.tolist()]


def segment_id(tokens: Sequence[str]) -> str:
    """A short, stable name for the users sharing exactly these tokens."""
    return hashlib.blake2b("|".join(tokens).encode(), digest_size=6).hexdigest()


def _nearest(points: Tensor, centroids: Tensor) -> Tensor:
    return torch.cdist(points, centroids).argmin(dim=1)


def _kmeans_plus_plus(points: Tensor, codes: int, generator: torch.Generator) -> Tensor:
    # Spread-out seeds converge faster and to better codebooks than uniform picks (Arthur & Vassilvitskii).
    chosen = [int(torch.randint(points.shape[0], (1,), generator=generator))]
    distance = (points - points[chosen[0]]).pow(2).sum(dim=1)
    for _ in range(1, codes):
        # Fewer distinct points than codes: duplicate centroids are harmless, they just stay unused.
        weights = distance if distance.sum() > 0 else torch.ones_like(distance)
        chosen.append(int(torch.multinomial(weights, 1, generator=generator)))
        distance = torch.minimum(distance, (points - points[chosen[-1]]).pow(2).sum(dim=1))
    return points[chosen].clone()


def _kmeans(points: Tensor, centroids: Tensor, iterations: int) -> Tensor:
    centroids = centroids.clone()
    for _ in range(iterations):
        nearest = _nearest(points, centroids)
        counts = torch.bincount(nearest, minlength=centroids.shape[0])
        sums = torch.zeros_like(centroids).index_add_(0, nearest, points)
        # An empty cluster keeps its centroid, so a warm-started code is not silently renumbered.
        updated = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids


def align_codes(codebooks: Tensor, codes: Tensor, previous_codes: Tensor) -> tuple[Tensor, Tensor]:
    """Renumbers each level's codes so they agree with `previous_codes` for as many users as possible.

    `codes` and `previous_codes` are `[n, levels]` for the same n users (last night's codes of the users
    both nights share). Codes are matched greedily by how many users they share, most first; unmatched codes
    keep their order. Returns the permuted codebooks and the renumbered codes: the same quantizer, named so
    that a retrained model's tokens still mean last night's segments where it can.
    """
    aligned_books, aligned_codes = codebooks.clone(), codes.clone()
    levels, count = codebooks.shape[0], codebooks.shape[1]
    for level in range(levels):
        overlap = torch.zeros(count, count, dtype=torch.long)
        if previous_codes.shape[0]:
            overlap.index_put_(
                (codes[:, level], previous_codes[:, level]),
                torch.ones(codes.shape[0], dtype=torch.long),
                accumulate=True,
            )
        label = torch.full((count,), -1, dtype=torch.long)
        taken = torch.zeros(count, dtype=torch.bool)
        # Ties go to the lower code numbers: a stable order makes the renumbering reproducible.
        for flat in torch.argsort(-overlap.flatten(), stable=True).tolist():
            new, old = divmod(flat, count)
            if overlap[new, old] == 0:
                break
            if label[new] < 0 and not taken[old]:
                label[new], taken[old] = old, True
        free = iter(torch.nonzero(~taken).flatten().tolist())
        for new in range(count):
            if label[new] < 0:
                label[new] = next(free)
        aligned_books[level][label] = codebooks[level]
        aligned_codes[:, level] = label[codes[:, level]]
    return aligned_books, aligned_codes
