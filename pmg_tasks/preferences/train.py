"""Training the preference GNN with BPR, early-stopped on a time-based holdout.

BPR (Rendle et al.) asks that a user score an item they engaged with above an item they did not. The
negative is the hardest of a few drawn at random: the one the model currently scores highest (dynamic
negative sampling, Zhang et al. 2013), which teaches more per step than a uniform draw. How strongly and
how recently a user engaged already weighs the edge in propagation; the loss counts every positive once
(weighting it again measured worse on MovieLens). All randomness comes from one seeded generator, so the
same graph, model and seed give the same weights.

What makes it fast on a CPU (docs/preference_graph.md has the measurements): the normalised adjacency is
built once per graph, propagation's backward reuses it (model.propagate), negatives for a whole epoch are
drawn in one call, and batches are large (8192 pairs) with a learning rate to match.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from pmg_tasks.preferences.evaluate import RankingTask, ranking_metrics
from pmg_tasks.preferences.graph import InteractionGraph
from pmg_tasks.preferences.model import ModalPreferenceGNN, normalized_adjacency, sparse_features

# Tries to replace a sampled "negative" that is in fact a positive; a few leftovers only add a little noise.
_RESAMPLE_ROUNDS = 3


@dataclass(frozen=True)
class GraphTensors:
    """What the model propagates over: each view's normalised adjacency, item features and item mask."""

    adjacency: dict[str, Tensor]
    item_features: dict[str, Tensor | tuple[Tensor, Tensor]]
    item_mask: dict[str, Tensor]


def graph_tensors(graph: InteractionGraph) -> GraphTensors:
    """The torch form of `graph`, computed once and reused for every step."""
    nodes = graph.num_users + graph.num_items
    return GraphTensors(
        adjacency={
            view: normalized_adjacency(*graph.edge_index(view), nodes) for view in graph.item_features
        },
        item_features={
            view: _sparse_if_mostly_zero(torch.tensor(f)) for view, f in graph.item_features.items()
        },
        item_mask={view: torch.tensor(mask) for view, mask in graph.item_in_view.items()},
    )


def _sparse_if_mostly_zero(features: Tensor) -> Tensor | tuple[Tensor, Tensor]:
    # A hashed bag of words has a few words per item (3.5% of MovieLens's entries): sparse, its projection
    # took half the time of a dense one.
    if features.count_nonzero() > 0.1 * features.numel():
        return features
    return sparse_features(features)


@dataclass
class TrainingResult:
    """What training did: the mean loss of each epoch, the training seconds spent by the end of each epoch
    (validation not counted), and with a holdout, Recall@k after each epoch, the epoch whose weights were
    kept, and whether patience ran out before `epochs`."""

    losses: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False

    @property
    def epochs(self) -> int:
        return len(self.losses)


def bpr_loss(positive_scores: Tensor, negative_scores: Tensor) -> Tensor:
    """Mean of -log sigmoid(positive - negative): low when positives outscore negatives."""
    return -F.logsigmoid(positive_scores - negative_scores).mean()


def sample_negatives(
    users: Tensor, num_items: int, positive_keys: Tensor, generator: torch.Generator
) -> Tensor:
    """One item row per entry of `users` drawn uniformly (any shape), redrawn where it is one of that
    user's positives.

    `positive_keys` is the sorted `user * num_items + item` of every known positive.
    """
    items = torch.randint(num_items, users.shape, generator=generator)
    for _ in range(_RESAMPLE_ROUNDS):
        clash = torch.isin(users * num_items + items, positive_keys)
        if not clash.any():
            break
        items[clash] = torch.randint(num_items, (int(clash.sum()),), generator=generator)
    return items


def train_bpr(
    model: ModalPreferenceGNN,
    graph: InteractionGraph,
    *,
    epochs: int,
    seed: int,
    learning_rate: float = 0.01,
    batch_size: int = 8192,
    l2: float = 1e-4,
    negative_candidates: int = 8,
    validation: RankingTask | None = None,
    patience: int = 5,
    k: int = 20,
) -> TrainingResult:
    """Trains `model` in place on the edges of `graph` for at most `epochs` epochs.

    With `validation` (held-out pairs on `graph`'s rows, which `graph` must not contain), Recall@k is
    measured after every epoch; training stops once it has not improved for `patience` epochs, and the
    best epoch's weights are the ones left in `model`. Each positive's negative is the best-scored of
    `negative_candidates` random items (1: plain uniform sampling). The L2 penalty touches only the rows
    in the batch, so ids carried over from earlier nights but absent tonight keep their embeddings.
    """
    if graph.num_edges == 0:
        raise ValueError("the interaction graph has no edges to train on")
    generator = torch.Generator().manual_seed(seed)
    tensors = graph_tensors(graph)
    users = torch.tensor(graph.edge_user)
    items = torch.tensor(graph.edge_item)
    positive_keys = torch.sort(users * graph.num_items + items).values
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)

    result = TrainingResult()
    best_state, best_score = None, -1.0
    elapsed = 0.0
    with _flushing_denormals():
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            model.train()
            order = torch.randperm(graph.num_edges, generator=generator)
            candidates = sample_negatives(
                users[order, None].expand(-1, negative_candidates), graph.num_items, positive_keys, generator
            )
            total = 0.0
            for batch, batch_candidates in zip(
                order.split(batch_size), candidates.split(batch_size), strict=True
            ):
                batch_users, batch_items = users[batch], items[batch]
                embeddings = model(tensors.adjacency, tensors.item_features, tensors.item_mask)
                batch_negatives = hardest_negatives(model, embeddings, batch_users, batch_candidates)
                loss = bpr_loss(
                    model.score(embeddings, batch_users, batch_items),
                    model.score(embeddings, batch_users, batch_negatives),
                )
                loss = loss + l2 * _embedding_penalty(model, batch_users, batch_items, batch_negatives)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            result.losses.append(total / graph.num_edges)
            elapsed += time.perf_counter() - started
            result.seconds.append(elapsed)
            if validation is None:
                continue
            score = validation_recall(model, tensors, validation, k)
            result.validation.append(score)
            if score > best_score:
                best_score, result.best_epoch = score, epoch
                best_state = copy.deepcopy(model.state_dict())
            elif epoch - result.best_epoch >= patience:
                result.stopped_early = epoch < epochs
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        result.best_epoch = result.epochs
    model.eval()
    return result


@torch.no_grad()
def hardest_negatives(
    model: ModalPreferenceGNN, embeddings: dict[str, Tensor], users: Tensor, candidates: Tensor
) -> Tensor:
    """For each `users[k]`, the item of `candidates[k]` (a row of item rows) that the model scores highest."""
    if candidates.shape[1] == 1:
        return candidates[:, 0]
    user_vectors, item_vectors = model.ranking_vectors(embeddings)
    scores = torch.bmm(item_vectors[candidates], user_vectors[users, :, None]).squeeze(2)
    return candidates.gather(1, scores.argmax(dim=1, keepdim=True)).squeeze(1)


@torch.no_grad()
def validation_recall(
    model: ModalPreferenceGNN, tensors: GraphTensors, task: RankingTask, k: int = 20
) -> float:
    """Recall@k of `model` on `task`, propagating over `tensors`."""
    model.eval()
    embeddings = model(tensors.adjacency, tensors.item_features, tensors.item_mask)
    return ranking_metrics(*model.ranking_vectors(embeddings), task, k=k)[f"recall@{k}"]


def _embedding_penalty(
    model: ModalPreferenceGNN, users: Tensor, positives: Tensor, negatives: Tensor
) -> Tensor:
    # LightGCN's regulariser: squared norms of the layer-0 rows this batch used, per pair.
    penalty = torch.zeros(())
    for view in model.views:
        penalty = penalty + model.user_embedding[view].weight[users].pow(2).sum()
        item_table = model.item_embedding[view].weight
        penalty = penalty + item_table[positives].pow(2).sum() + item_table[negatives].pow(2).sum()
    return penalty / users.shape[0]


@contextlib.contextmanager
def _flushing_denormals() -> Iterator[None]:
    # Subnormal floats are computed in microcode on x86. Measured on MovieLens with an earlier version of
    # this loop: the first epochs ran 10-25x slower unless they were flushed to zero, which changes
    # nothing at the magnitudes training cares about. torch has no getter, so this restores the default.
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@torch.no_grad()
def node_embeddings(model: ModalPreferenceGNN, graph: InteractionGraph) -> dict[str, tuple[Tensor, Tensor]]:
    """Final `(user, item)` embeddings of every view after propagation over `graph`."""
    model.eval()
    tensors = graph_tensors(graph)
    embeddings = model(tensors.adjacency, tensors.item_features, tensors.item_mask)
    return {view: model.split(embedding) for view, embedding in embeddings.items()}


@torch.no_grad()
def ranking_auc(
    model: ModalPreferenceGNN,
    graph: InteractionGraph,
    users: Tensor,
    items: Tensor,
    *,
    negatives_per_pair: int = 50,
    seed: int = 0,
) -> float:
    """How often held-out pairs `(users[k], items[k])` outscore random items the user never touched.

    0.5 is chance, 1.0 is every held-out item ranked above every sampled one. Propagation is over
    `graph`, which must not contain the held-out pairs.
    """
    model.eval()
    tensors = graph_tensors(graph)
    embeddings = model(tensors.adjacency, tensors.item_features, tensors.item_mask)
    known = torch.cat(
        [
            torch.tensor(graph.edge_user) * graph.num_items + torch.tensor(graph.edge_item),
            users * graph.num_items + items,
        ]
    )
    positive_keys = torch.sort(known).values
    generator = torch.Generator().manual_seed(seed)
    repeated_users = users.repeat_interleave(negatives_per_pair)
    sampled = sample_negatives(repeated_users, graph.num_items, positive_keys, generator)
    positive_scores = model.score(embeddings, users, items).repeat_interleave(negatives_per_pair)
    negative_scores = model.score(embeddings, repeated_users, sampled)
    wins = (positive_scores > negative_scores).float() + 0.5 * (positive_scores == negative_scores).float()
    return float(wins.mean())
