"""`pmg evaluate preferences`: the split, the shared training loop, LightGCN's precomputed adjacency, and the
command end to end on a small demo-seeded warehouse."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from pmg_tasks.preferences.baselines import fit_bpr_mf, fit_lightgcn
from pmg_tasks.preferences.comparison import split_events
from pmg_tasks.preferences.evaluate import ranking_metrics, ranking_task
from pmg_tasks.preferences.graph import interaction_graph
from pmg_tasks.preferences.model import normalized_adjacency


def _events(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "user_id": u,
                "item_id": i,
                "event_type": "view",
                "event_ts": pd.Timestamp("2026-01-01") + pd.Timedelta(hours=h),
            }
            for u, i, h in rows
        ]
    )


def test_the_split_is_per_user_by_first_engagement_and_validation_comes_before_test():
    # User a engages with ten items, i0 first ... i9 last; i0 again at the very end (a repeat is not news).
    rows = [("a", f"i{n}", n) for n in range(10)] + [("a", "i0", 100)]
    # User b knows every item a has, in another order, so the test items are known to training.
    rows += [("b", f"i{n}", 50 + (9 - n)) for n in range(10)]
    split = split_events(_events(rows), validation_fraction=0.25, validation_min_items=5, test_fraction=0.2)

    test_a = sorted(split.test.loc[split.test["user_id"] == "a", "item_id"])
    assert test_a == ["i8", "i9"]  # the latest two FIRST engagements; i0's repeat at hour 100 does not count
    valid_a = sorted(split.validation.loc[split.validation["user_id"] == "a", "item_id"])
    assert valid_a == ["i6", "i7"]  # the latest of what is left: before the test in time
    fit_a = set(split.fit.loc[split.fit["user_id"] == "a", "item_id"])
    assert fit_a == {f"i{n}" for n in range(6)}
    assert len(split.fit[(split.fit["user_id"] == "a") & (split.fit["item_id"] == "i0")]) == 2  # events kept
    assert set(map(tuple, split.train.to_numpy())) >= set(map(tuple, split.validation.to_numpy()))


def test_test_items_no_training_pair_knows_are_dropped():
    rows = [("a", f"i{n}", n) for n in range(10)]  # only a: its latest two items are nobody's in training
    split = split_events(_events(rows), validation_fraction=0.2, validation_min_items=5)
    assert split.test.empty


@pytest.fixture
def clustered():
    """Users who each like one of four clusters of items, with a held-out pair per user."""
    generator = torch.Generator().manual_seed(0)
    pairs = []
    for user in range(40):
        cluster = user % 4
        items = [f"item-{cluster + 4 * n}" for n in torch.randperm(10, generator=generator)[:6].tolist()]
        pairs += [(f"user-{user}", item) for item in items]
    frame = pd.DataFrame(pairs, columns=["user_id", "item_id"])
    held = frame.groupby("user_id").tail(1)
    kept = frame.drop(held.index)
    graph = interaction_graph(kept.assign(weight=1.0), known_item_ids=frame["item_id"])
    return graph, ranking_task(graph, kept, held)


def test_the_shared_loop_keeps_the_best_epochs_weights(clustered):
    graph, validation = clustered
    users, items, result = fit_bpr_mf(
        graph, dim=16, epochs=30, learning_rate=0.05, batch_size=64, negative_candidates=4, validation=validation,
        patience=3,
    )  # fmt: skip
    assert result.best_epoch >= 1 and len(result.validation) == result.epochs
    # What comes back is the best epoch, not the last one.
    assert ranking_metrics(users, items, validation)["recall@20"] == pytest.approx(max(result.validation))
    assert max(result.validation) > 0.5  # clustered tastes are easy: far above chance (20 of 40 items)


def test_lightgcn_propagates_over_the_adjacency_it_is_given_and_never_normalises_again(
    clustered, monkeypatch
):
    import torch_geometric.nn.conv.lg_conv as lg_conv

    def refuse(*args, **kwargs):
        raise AssertionError("LGConv normalised the graph again")

    monkeypatch.setattr(lg_conv, "gcn_norm", refuse)
    graph, validation = clustered
    adjacency = normalized_adjacency(*graph.edge_index(), graph.num_users + graph.num_items)
    users, items, result = fit_lightgcn(
        graph, adjacency, dim=16, layers=2, epochs=20, learning_rate=0.05, batch_size=64, l2=1e-4,
        negative_candidates=4, validation=validation, patience=3,
    )  # fmt: skip
    assert users.shape == (graph.num_users, 16) and items.shape == (graph.num_items, 16)
    assert ranking_metrics(users, items, validation)["recall@20"] == pytest.approx(max(result.validation))


def test_pmg_evaluate_preferences_on_a_demo_seeded_warehouse(tmp_path, monkeypatch, capsys):
    from pmg_tasks.cli import main

    monkeypatch.setenv("PMG_HOME", str(tmp_path))
    monkeypatch.setenv("PMG_PREFERENCES__DIM", "16")
    assert main(["demo", "seed", "--ds", "2026-11-20", "--users", "40", "--items", "24", "--days", "14"]) == 0
    out = tmp_path / "evaluation.json"

    code = main(
        [
            "evaluate",
            "preferences",
            "--max-epochs",
            "6",
            "--learning-rates",
            "0.003",
            "0.03",
            "--out",
            str(out),
        ]
    )

    assert code == 0
    printed = capsys.readouterr().out
    assert "| preference GNN |" in printed and "| BPR-MF |" in printed and "| popularity |" in printed
    report = json.loads(out.read_text())
    assert report["source"].startswith("the warehouse duckdb:///")
    assert set(report["models"]) == {"popularity", "bpr_mf", "lightgcn", "gnn"}
    assert report["split"]["test_users"] > 0 and report["split"]["validation_pairs"] > 0
    for name, row in report["models"].items():
        assert 0.0 < row["recall@20"] <= 1.0 and 0.0 < row["ndcg@20"] <= 1.0, name
        if name != "popularity":
            # Tuned alike: the same grid, the best learning rate by validation Recall@20, at most 6 epochs.
            assert [run["learning_rate"] for run in row["grid"]] == [0.003, 0.03]
            assert row["validation_recall"] == max(run["validation_recall"] for run in row["grid"])
            assert all(run["epochs"] <= 6 for run in row["grid"])


def test_too_little_history_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from pmg_tasks.cli import main

    monkeypatch.setenv("PMG_HOME", str(tmp_path))
    assert main(["demo", "seed", "--ds", "2026-11-20", "--users", "5", "--items", "8", "--days", "1"]) == 0
    assert main(["evaluate", "preferences", "--min-interactions", "1000"]) == 2
    assert "too little history to evaluate" in capsys.readouterr().err
