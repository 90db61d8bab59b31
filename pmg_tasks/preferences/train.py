"""Training the preference GNN with BPR, and the ranking check that says whether it learned anything.

BPR (Rendle et al.) asks that a user score an item they engaged with above an item sampled at random;
stronger engagements (edge weight) count for more. All randomness comes from one seeded generator, so the
same graph, model and seed give the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pmg_tasks.preferences.graph import InteractionGraph
from pmg_tasks.preferences.model import ModalPreferenceGNN, normalized_adjacency

# Tries to replace a sampled "negative" that is in fact a positive; a few leftovers only add a little noise.
_RESAMPLE_ROUNDS = 3


@dataclass(frozen=True)
class GraphTensors:
    """What the model propagates over: the normalised adjacency and each view's item features."""

    adjacency: Tensor
    item_features: dict[str, Tensor]


def graph_tensors(graph: InteractionGraph) -> GraphTensors:
    """The torch form of `graph`, computed once and reused for every step."""
    edge_index, edge_weight = graph.edge_index()
    return GraphTensors(
        adjacency=normalized_adjacency(edge_index, edge_weight, graph.num_users + graph.num_items),
        item_features={view: torch.tensor(f) for view, f in graph.item_features.items()},
    )


def bpr_loss(positive_scores: Tensor, negative_scores: Tensor, weights: Tensor | None = None) -> Tensor:
    """Weighted mean of -log sigmoid(positive - negative): low when positives outscore negatives."""
    losses = -F.logsigmoid(positive_scores - negative_scores)
    if weights is None:
        return losses.mean()
    return (weights * losses).sum() / weights.sum()


def sample_negatives(
    users: Tensor, num_items: int, positive_keys: Tensor, generator: torch.Generator
) -> Tensor:
    """One item row per user drawn uniformly, redrawn where it is one of that user's positives.

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
    batch_size: int = 16384,
    l2: float = 1e-4,
) -> list[float]:
    """Trains `model` in place on the edges of `graph` and returns the mean BPR loss of each epoch.

    Each batch propagates the whole graph once (small graphs fit in one batch, so that is one propagation
    per epoch). The L2 penalty touches only the rows in the batch, so ids carried over from earlier nights
    but absent tonight keep their embeddings.
    """
    if graph.num_edges == 0:
        raise ValueError("the interaction graph has no edges to train on")
    generator = torch.Generator().manual_seed(seed)
    tensors = graph_tensors(graph)
    users = torch.tensor(graph.edge_user)
    items = torch.tensor(graph.edge_item)
    weights = torch.tensor(graph.edge_weight, dtype=torch.float32)
    positive_keys = torch.sort(users * graph.num_items + items).values
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)

    model.train()
    epoch_losses = []
    for _ in range(epochs):
        total, count = 0.0, 0
        for batch in torch.randperm(graph.num_edges, generator=generator).split(batch_size):
            batch_users, batch_items = users[batch], items[batch]
            negatives = sample_negatives(batch_users, graph.num_items, positive_keys, generator)
            embeddings = model(tensors.adjacency, tensors.item_features)
            loss = bpr_loss(
                model.score(embeddings, batch_users, batch_items),
                model.score(embeddings, batch_users, negatives),
                weights[batch],
            )
            loss = loss + l2 * _embedding_penalty(model, batch_users, batch_items, negatives)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            count += len(batch)
        epoch_losses.append(total / count)
    model.eval()
    return epoch_losses


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


@torch.no_grad()
def node_embeddings(model: ModalPreferenceGNN, graph: InteractionGraph) -> dict[str, tuple[Tensor, Tensor]]:
    """Final `(user, item)` embeddings of every view after propagation over `graph`."""
    model.eval()
    tensors = graph_tensors(graph)
    embeddings = model(tensors.adjacency, tensors.item_features)
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
    embeddings = model(tensors.adjacency, tensors.item_features)
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
