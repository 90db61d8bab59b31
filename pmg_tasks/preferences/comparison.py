"""`pmg evaluate preferences`: the preference GNN against its baselines, on the same split, tuned alike.

The split is per user and by time (`temporal_holdout`): of each user's distinct engaged items (a user and
an item count once, at their first event), the latest `test_fraction` are the test (users with at least
`min_interactions` items); test items never seen in training are dropped. Of the rest, each user's latest
`validation_fraction` are the validation set every model early-stops on (the GNN's own
settings.preferences.validation_*); every model learns from what remains, the fit set.

Fair means the models differ only in the model: the same embedding size (settings.preferences.dim), the
same hard negatives (the best-scored of negative_candidates random non-positives), the same batch size and
L2, the same learning-rate grid with the best chosen on validation, the same patience, the best epoch's
weights kept. The graph models (the GNN, torch-geometric's LightGCN) propagate over the same graph of the fit
set, whose normalised adjacency is computed once. Test Recall@k and NDCG@k rank every training item with the
user's training items (fit and validation) removed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from pmg_tasks.settings import Settings

log = logging.getLogger(__name__)

TEST_FRACTION = 0.2
MIN_INTERACTIONS = 5
LEARNING_RATES = (1e-3, 3e-3, 1e-2)
MAX_EPOCHS = 200
MODELS = ("popularity", "bpr_mf", "lightgcn", "gnn")


@dataclass(frozen=True)
class PreferenceSplit:
    """`fit` events (user_id, item_id, event_type, event_ts) every model learns from; `validation` and
    `test` pairs (user_id, item_id); `train` pairs (fit and validation), removed from the test ranking."""

    fit: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    train: pd.DataFrame

    def sizes(self) -> dict[str, int]:
        return {
            "fit_pairs": int(self.fit[["user_id", "item_id"]].drop_duplicates().shape[0]),
            "validation_pairs": len(self.validation),
            "test_pairs": len(self.test),
            "test_users": int(self.test["user_id"].nunique()),
        }


def split_events(
    events: pd.DataFrame,
    *,
    validation_fraction: float,
    validation_min_items: int,
    test_fraction: float = TEST_FRACTION,
    min_interactions: int = MIN_INTERACTIONS,
) -> PreferenceSplit:
    """The per-user temporal split of `events` (user_id, item_id, event_type, event_ts) described above."""
    from pmg_tasks.preferences.evaluate import temporal_holdout

    firsts = (
        events.groupby(["user_id", "item_id"], sort=True, as_index=False)["event_ts"]
        .min()
        .rename(columns={"event_ts": "timestamp"})
    )
    train, test = temporal_holdout(firsts, test_fraction, min_interactions=min_interactions)
    test = test[test["item_id"].isin(set(train["item_id"]))]
    fit, validation = temporal_holdout(train, validation_fraction, min_interactions=validation_min_items)
    kept = events.merge(fit[["user_id", "item_id"]], on=["user_id", "item_id"])
    return PreferenceSplit(
        fit=kept.reset_index(drop=True),
        validation=validation[["user_id", "item_id"]].reset_index(drop=True),
        test=test[["user_id", "item_id"]].reset_index(drop=True),
        train=train[["user_id", "item_id"]].reset_index(drop=True),
    )


def compare_preference_models(
    split: PreferenceSplit,
    items: pd.DataFrame,
    settings: Settings,
    *,
    learning_rates: tuple[float, ...] = LEARNING_RATES,
    max_epochs: int = MAX_EPOCHS,
    models: tuple[str, ...] = MODELS,
    k: int = 20,
) -> dict:
    """Test Recall@k and NDCG@k of each of `models` on `split`, each trained (where it trains) at every
    learning rate of the grid and kept at the one with the best validation Recall@k. `items` (item_id,
    title, categories) gives the GNN its text features. Returns a JSON-ready report."""
    import torch

    from pmg_tasks.preferences.evaluate import ranking_metrics, ranking_task
    from pmg_tasks.preferences.graph import build_interaction_graph
    from pmg_tasks.preferences.model import normalized_adjacency

    if split.test.empty or split.validation.empty:
        raise ValueError(
            "too little history to evaluate: no user has enough distinct items for a test and a validation "
            f"set (at least {max(MIN_INTERACTIONS, settings.preferences.validation_min_items)} each); "
            "import more events or lower --min-interactions"
        )
    torch.set_num_threads(settings.preferences.torch_threads)
    prefs = settings.preferences
    graph = build_interaction_graph(
        split.fit, items, known_user_ids=split.train["user_id"], known_item_ids=split.train["item_id"],
        recency_half_life=prefs.recency_half_life,
    )  # fmt: skip
    fit_pairs = split.fit[["user_id", "item_id"]].drop_duplicates()
    validation = ranking_task(graph, fit_pairs, split.validation)
    test = ranking_task(graph, split.train, split.test)
    adjacency = normalized_adjacency(*graph.edge_index(), graph.num_users + graph.num_items)
    common = {
        "dim": prefs.dim, "epochs": max_epochs, "batch_size": prefs.batch_size, "l2": prefs.l2,
        "negative_candidates": prefs.negative_candidates, "validation": validation, "patience": prefs.patience,
        "seed": settings.seed,
    }  # fmt: skip
    trainers = {
        "bpr_mf": lambda lr: _bpr_mf(graph, lr, common),
        "lightgcn": lambda lr: _lightgcn(graph, adjacency, lr, prefs.layers, common),
        "gnn": lambda lr: _gnn(graph, lr, prefs.layers, common),
    }
    report: dict = {"split": split.sizes(), "k": k, "learning_rates": list(learning_rates), "models": {}}
    for name in models:
        if name == "popularity":
            from pmg_tasks.preferences.baselines import popularity_vectors

            report["models"][name] = _metrics(ranking_metrics(*popularity_vectors(graph), test, k=k), k)
            continue
        runs = []
        for learning_rate in learning_rates:
            started = time.perf_counter()
            users, items_, result = trainers[name](learning_rate)
            runs.append(
                {
                    "learning_rate": learning_rate,
                    "validation_recall": max(result.validation, default=0.0),
                    "epochs": result.epochs,
                    "best_epoch": result.best_epoch,
                    "seconds": round(time.perf_counter() - started, 2),
                    "vectors": (users, items_),
                }
            )
            log.info(
                "%s at lr %g: validation Recall@%d %.4f after %d epochs (best %d), %.1f s", name, learning_rate, k,
                runs[-1]["validation_recall"], result.epochs, result.best_epoch, runs[-1]["seconds"],
            )  # fmt: skip
        best = max(runs, key=lambda run: run["validation_recall"])
        report["models"][name] = {
            **_metrics(ranking_metrics(*best["vectors"], test, k=k), k),
            **{key: value for key, value in best.items() if key != "vectors"},
            "grid": [{key: value for key, value in run.items() if key != "vectors"} for run in runs],
        }
    return report


def _metrics(metrics: dict, k: int) -> dict:
    return {f"recall@{k}": round(metrics[f"recall@{k}"], 4), f"ndcg@{k}": round(metrics[f"ndcg@{k}"], 4)}


def _bpr_mf(graph, learning_rate: float, common: dict):
    from pmg_tasks.preferences.baselines import fit_bpr_mf

    return fit_bpr_mf(graph, learning_rate=learning_rate, **common)


def _lightgcn(graph, adjacency, learning_rate: float, layers: int, common: dict):
    from pmg_tasks.preferences.baselines import fit_lightgcn

    return fit_lightgcn(graph, adjacency, layers=layers, learning_rate=learning_rate, **common)


def _gnn(graph, learning_rate: float, layers: int, common: dict):
    """The production model (model.ModalPreferenceGNN, train.train_bpr), as a full retrain trains it."""
    import torch

    from pmg_tasks.preferences.model import ModalPreferenceGNN
    from pmg_tasks.preferences.train import graph_tensors, train_bpr

    dims = {view: features.shape[1] for view, features in graph.item_features.items()}
    model = ModalPreferenceGNN(graph.num_users, graph.num_items, common["dim"], layers, dims)
    model.reset_parameters(torch.Generator().manual_seed(common["seed"]))
    result = train_bpr(
        model, graph, epochs=common["epochs"], seed=common["seed"], learning_rate=learning_rate,
        batch_size=common["batch_size"], l2=common["l2"], negative_candidates=common["negative_candidates"],
        validation=common["validation"], patience=common["patience"],
    )  # fmt: skip
    tensors = graph_tensors(graph)
    with torch.no_grad():
        users, items = model.ranking_vectors(model(tensors.adjacency, tensors.item_features, tensors.item_mask))
    return users, items, result


def warehouse_events(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`(events, items)` of the configured warehouse for an evaluation: every dated event of a known type
    whose ids the validation rules would let through, and the catalog's item_id, title and categories."""
    from datetime import UTC, datetime

    from pmg_tasks.extraction_window import plausible_span
    from pmg_tasks.preferences.graph import EVENT_WEIGHTS
    from pmg_tasks.validation.rules import (
        CONTROL_CHARS_PY,
        MAX_ID_LENGTH,
        has_format_characters,
        is_null_like,
    )
    from pmg_tasks.warehouse import connect, load_sql

    floor, ceiling = plausible_span(settings.validation.plausible_since, datetime.now(UTC))
    bounds = {"floor": floor, "ceiling": ceiling}
    with connect(settings) as warehouse:
        events = warehouse.fetch_frame(load_sql("evaluation_events.sql"), bounds)
        items = warehouse.fetch_frame("SELECT item_id, title, categories FROM items ORDER BY item_id")
    events = events[events["event_type"].isin(list(EVENT_WEIGHTS))]
    for column in ("user_id", "item_id"):
        ids = events[column].astype(str)
        usable = (
            ids.str.strip().ne("")
            & ids.str.len().le(MAX_ID_LENGTH)
            & ~ids.str.contains(CONTROL_CHARS_PY, regex=True)
            & ~ids.map(lambda value: is_null_like(value) or has_format_characters(value))
        )
        events = events[usable]
    return events.reset_index(drop=True), items


def table(report: dict) -> str:
    """The report as a Markdown table, one row per model."""
    k = report["k"]
    names = {
        "popularity": "popularity",
        "bpr_mf": "BPR-MF",
        "lightgcn": "LightGCN (torch-geometric, precomputed adjacency)",
        "gnn": "preference GNN",
    }
    lines = [f"| model | Recall@{k} | NDCG@{k} | learning rate | epochs (best) | seconds |", "|---|---|---|---|---|---|"]
    for name, row in report["models"].items():
        trained = "learning_rate" in row
        lines.append(
            f"| {names.get(name, name)} | {row[f'recall@{k}']:.4f} | {row[f'ndcg@{k}']:.4f} | "
            + (f"{row['learning_rate']:g} | {row['epochs']} ({row['best_epoch']}) | {row['seconds']} |"
               if trained else "- | - | - |")
        )  # fmt: skip
    return "\n".join(lines)
