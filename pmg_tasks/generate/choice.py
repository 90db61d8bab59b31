"""Choosing among a shared generation's candidates, per user (PMG section 3.4).

A generation request is shared by every user of a segment (or belongs to one user). Each user gets their own
best `variants` of its k candidates by their own

    z = alpha * log(d_p) + (1 - alpha) * log(d_t) + w * log(c)

where d_p is the similarity of a candidate to the user's own preference keywords (one row per user), d_t its
similarity to the target item and c its consistency with the request's headline (one value per candidate),
and w the campaign's consistency weight (0 keeps PMG's z exactly). The choice is a pure function of those
matrices: one matrix product gives every user's d_p, one row-wise sort gives every user's choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Cosine similarity is mapped to (0, 1]; the floor keeps log(d) finite for an image opposite to its text.
SIMILARITY_FLOOR = 1e-6


def similarity(cosine: np.ndarray) -> np.ndarray:
    """Cosine similarities in [-1, 1] mapped to (0, 1] as (1 + cos) / 2, floored at SIMILARITY_FLOOR."""
    return np.clip((1.0 + np.asarray(cosine, dtype=np.float64)) / 2.0, SIMILARITY_FLOOR, 1.0)


def preference_similarities(user_embeddings: np.ndarray, candidate_embeddings: np.ndarray) -> np.ndarray:
    """d_p as a `[users, candidates]` matrix from unit-length text embeddings of each user's preference
    keywords `[users, dim]` and image embeddings of the candidates `[candidates, dim]`: one matrix product."""
    # einsum rather than BLAS: for a tall, thin product like this one (thousands of users, k candidates) a
    # multi-threaded BLAS spends more time coordinating threads than multiplying on a busy worker.
    return similarity(np.einsum("ud,kd->uk", user_embeddings, candidate_embeddings))


def creative_score(
    d_p: np.ndarray | float,
    d_t: np.ndarray | float,
    alpha: float,
    consistency: np.ndarray | float | None = None,
    consistency_weight: float = 0.0,
) -> np.ndarray:
    """z, broadcasting: alpha weighs the user's taste (d_p) against the target item (d_t); with a consistency
    weight w, w * log(c) rewards an image that agrees with its headline."""
    z = alpha * np.log(d_p) + (1.0 - alpha) * np.log(d_t)
    if consistency_weight:
        z = z + consistency_weight * np.log(consistency)
    return np.asarray(z, dtype=np.float64)


@dataclass(frozen=True)
class Choice:
    """Each user's chosen candidates, best first: positions `[users, variants]` into the request's
    candidates, and the z and d_p of each."""

    candidates: np.ndarray
    z: np.ndarray
    d_p: np.ndarray


def choose_per_user(
    d_p: np.ndarray,
    d_t: np.ndarray,
    alpha: float,
    variants: int,
    consistency: np.ndarray | None = None,
    consistency_weight: float = 0.0,
    allowed: np.ndarray | None = None,
) -> Choice:
    """The best `variants` of k candidates for every user, by that user's own z.

    `d_p` is `[users, k]` (each user's similarity to every candidate), `d_t` and `consistency` are `[k]`;
    `allowed` (`[k]` booleans) leaves out candidates nobody may get (flagged by the safety checks).
    Ties keep generation order (the lower candidate position first), so a rerun chooses the same ones.
    """
    d_p = np.asarray(d_p, dtype=np.float64)
    d_t = np.asarray(d_t, dtype=np.float64)
    if d_p.ndim != 2 or d_t.shape != (d_p.shape[1],):
        raise ValueError(f"d_p must be [users, k] and d_t [k]; got {d_p.shape} and {d_t.shape}")
    if not 1 <= variants <= d_p.shape[1]:
        raise ValueError(f"variants must lie in [1, k={d_p.shape[1]}], got {variants}")
    if consistency_weight and (consistency is None or np.shape(consistency) != d_t.shape):
        raise ValueError("a consistency weight needs one consistency score per candidate")
    if allowed is not None and int(np.sum(allowed)) < variants:
        raise ValueError(f"{int(np.sum(allowed))} allowed candidates cannot give every user {variants}")
    z = creative_score(d_p, d_t[None, :], alpha, None if consistency is None else consistency[None, :],
                       consistency_weight)
    if allowed is not None:
        z = np.where(np.asarray(allowed, dtype=bool)[None, :], z, -np.inf)
    # A stable sort of -z: equal scores stay in candidate order.
    order = np.argsort(-z, axis=1, kind="stable")[:, :variants]
    return Choice(candidates=order, z=np.take_along_axis(z, order, axis=1), d_p=np.take_along_axis(d_p, order, axis=1))
