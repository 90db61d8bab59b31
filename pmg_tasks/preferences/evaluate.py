"""How well preferences rank what users did next: a time-based holdout, and Recall@K / NDCG@K over all items.

Metrics live apart from models (as in PyG): anything that gives users and items vectors whose dot product
ranks items, the GNN, a matrix factorisation or a token reconstruction, is judged the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from torch import Tensor

    from pmg_tasks.preferences.graph import InteractionGraph


def temporal_holdout(
    interactions: pd.DataFrame,
    fraction: float,
    *,
    min_interactions: int,
    user_column: str = "user_id",
    time_column: str = "timestamp",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`(kept, held)`: each user's latest `floor(fraction * n)` interactions held out, by time.

    Users with fewer than `min_interactions` rows keep all of them. Ties in time keep the input order
    (a stable sort), so the split is the same on every run.
    """
    ordered = interactions.sort_values([user_column, time_column], kind="stable")
    count = ordered.groupby(user_column)[user_column].transform("size")
    position = ordered.groupby(user_column).cumcount()
    held_count = (fraction * count).astype(int)
    held = (count >= min_interactions) & (position >= count - held_count)
    return ordered[~held], ordered[held]


@dataclass(frozen=True)
class RankingTask:
    """Pairs to find (`held_*`) and pairs to leave out of every ranking (`seen_*`), as row indices.

    Ranking is over all `num_items` items, with each user's seen items removed.
    """

    num_users: int
    num_items: int
    seen_users: Tensor
    seen_items: Tensor
    held_users: Tensor
    held_items: Tensor

    @property
    def users(self) -> Tensor:
        """Rows of the users with at least one held-out item: the users the metrics average over."""
        import torch

        return torch.unique(self.held_users)


def ranking_task(graph: InteractionGraph, seen: pd.DataFrame, held: pd.DataFrame) -> RankingTask:
    """`held` pairs to find and `seen` pairs to remove (frames of `user_id`, `item_id`) on `graph`'s rows.

    Raises ValueError when a pair names a user or item the graph does not have.
    """
    import torch

    users, items = graph.user_index(), graph.item_index()

    def rows(frame: pd.DataFrame) -> tuple[Tensor, Tensor]:
        user_rows = frame["user_id"].astype(str).map(users)
        item_rows = frame["item_id"].astype(str).map(items)
        if user_rows.isna().any() or item_rows.isna().any():
            raise ValueError("ranking pairs name users or items that are not in the graph")
        return (
            torch.tensor(user_rows.to_numpy(dtype="int64"), dtype=torch.long),
            torch.tensor(item_rows.to_numpy(dtype="int64"), dtype=torch.long),
        )

    return RankingTask(graph.num_users, graph.num_items, *rows(seen), *rows(held))


def ranking_metrics(
    user_vectors: Tensor, item_vectors: Tensor, task: RankingTask, k: int = 20, chunk: int = 2048
) -> dict[str, float]:
    """Recall@k and NDCG@k of ranking every item by `user_vectors @ item_vectors.T`, seen items removed.

    Recall@k is the share of a user's held-out items in their top k; NDCG@k discounts each hit by its rank
    and divides by the best possible (all of the top min(k, held) ranks hit). Both are averaged over the
    users with held-out items. Scores are computed densely, `chunk` users at a time.
    """
    import torch

    users = task.users
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
    ideal = discount.cumsum(0)
    recall_sum, ndcg_sum = 0.0, 0.0
    with torch.no_grad():
        for rows in users.split(chunk):
            local = torch.full((task.num_users,), -1, dtype=torch.long)
            local[rows] = torch.arange(len(rows))
            scores = user_vectors[rows].double() @ item_vectors.double().T
            seen = local[task.seen_users] >= 0
            scores[local[task.seen_users[seen]], task.seen_items[seen]] = -torch.inf
            held = torch.zeros(scores.shape, dtype=torch.bool)
            mine = local[task.held_users] >= 0
            held[local[task.held_users[mine]], task.held_items[mine]] = True
            top = scores.topk(min(k, task.num_items), dim=1).indices
            hits = held.gather(1, top).double()
            relevant = held.sum(dim=1)
            recall_sum += float((hits.sum(dim=1) / relevant).sum())
            best = ideal[(relevant.clamp(max=k) - 1)]
            ndcg_sum += float(((hits * discount[: hits.shape[1]]).sum(dim=1) / best).sum())
    n = max(len(users), 1)
    return {f"recall@{k}": recall_sum / n, f"ndcg@{k}": ndcg_sum / n, "users": len(users)}
