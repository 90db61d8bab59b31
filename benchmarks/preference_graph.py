"""The preference graph on MovieLens (ml-latest-small): ranking quality, speed, warm starts and tokens.

    .venv/bin/python -m benchmarks.preference_graph     # table on stdout, benchmarks/results/preference_graph.json

The data comes from `PMG_MOVIELENS_DIR` (default: <repo>/../shared/data/movielens-latest-small); it is
for research use and never enters the repository. Without it the benchmark says so and exits 0.

Protocol (pmg_tasks/preferences/movielens.py): ratings >= 3.5 are positives; per user with >= 5 positives
the latest 20% by time are test; test items unseen in train dropped; Recall@20 / NDCG@20 over all training
items with each user's training items removed. Every model sees the same split.

1. quality: popularity, BPR-MF (64-d, lr 1e-3, 200 epochs), and the GNN through the production stage
   (`update_preference_tokens` on the training positives as one night, default settings, 3 seeds), evaluated
   from the checkpoint the stage wrote.
2. speed: torch-geometric's `LightGCN` in the textbook loop (PyG's examples/lightgcn.py: every batch
   re-propagates the graph; 64-d, 3 layers, Adam lr 1e-2, batch 8192) against our `train_bpr` with the
   stage's settings, Recall@20 on the test after every epoch (not timed): seconds until each first reaches
   the textbook loop's best Recall@20.
3. warm start: three nights of 98%, 99% and 100% of the training positives (newest last), a full retrain
   then two warm starts (the stage's nightly path), each adding 1%; night 3 against the full retrains of
   part 1: seconds, Recall@20, and token churn (warm after warm, and warm after a full retrain).
4. tokens: Recall@20 of each user's reconstruction from their tokens against their full embedding, over a
   grid of levels x codes, with the number of segments each gives; descriptors of a few codes, keywords from
   the users' own MovieLens tags.

Not a test: nothing here asserts. The machine's load is recorded with the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "preference_graph.json"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "movielens-latest-small"
NIGHT_1, NIGHT_2, NIGHT_3 = "2024-01-01", "2024-01-02", "2024-01-03"
THREADS = 1  # the stage's default (settings.preferences.torch_threads): two threads were slower on a busy 2-core machine
SEEDS = (0, 1, 2)
GRID_LEVELS, GRID_CODES = (1, 2, 3), (8, 16, 32, 64)


def movielens_dir() -> Path:
    from pmg_tasks.settings import Settings

    return Path(Settings().movielens_dir or DEFAULT_DATA)


def as_events(positives):
    """MovieLens positives as the stage's `events_valid` rows: one equal-weight event per positive."""
    import pandas as pd

    return pd.DataFrame(
        {
            "user_id": positives["user_id"].to_numpy(),
            "item_id": positives["item_id"].to_numpy(),
            "event_type": "view",
            "event_ts": pd.to_datetime(positives["timestamp"].to_numpy(), unit="s"),
        }
    )


def as_items(movies):
    return movies.assign(description="", attributes="{}", image_uri=None, updated_at=None)


def stage_settings(home: Path, seed: int = 0, **overrides):
    from pmg_tasks.settings import Settings

    preferences = {"torch_threads": THREADS, "full_retrain_weekday": -1, **overrides.pop("preferences", {})}
    return Settings(home=home, seed=seed, preferences=preferences, **overrides)


def run_night(settings, ds: str, events, items) -> dict:
    """The production stage on one night; returns its report, with wall seconds added."""
    from pmg_tasks.layout import run_key
    from pmg_tasks.preferences import update_preference_tokens
    from pmg_tasks.store import open_store, read_json, write_table

    store = open_store(settings)
    write_table(store, run_key(ds, "events_valid.parquet"), events)
    write_table(store, run_key(ds, "items.parquet"), items)
    started = time.perf_counter()
    update_preference_tokens(settings, ds)
    report = read_json(store, run_key(ds, "preference_graph.json"))
    report["wall_seconds"] = round(time.perf_counter() - started, 2)
    return report


def stage_embeddings(settings, version: str, events, items):
    """`(graph, model, user_vectors, item_vectors)` of the model version the stage wrote, over `events`."""
    import torch

    from pmg_tasks.layout import gnn_model_prefix
    from pmg_tasks.preferences.graph import build_interaction_graph
    from pmg_tasks.preferences.model import ModalPreferenceGNN
    from pmg_tasks.preferences.train import node_embeddings
    from pmg_tasks.store import open_store

    with open_store(settings).reading(gnn_model_prefix(version) + "checkpoint.pt") as path:
        checkpoint = torch.load(path, weights_only=True)
    graph = build_interaction_graph(
        events, items, known_user_ids=checkpoint["user_ids"], known_item_ids=checkpoint["item_ids"],
        recency_half_life=settings.preferences.recency_half_life,
    )  # fmt: skip
    model = ModalPreferenceGNN(
        graph.num_users,
        graph.num_items,
        checkpoint["dim"],
        checkpoint["num_layers"],
        checkpoint["item_feature_dims"],
    )
    model.load_state_dict(checkpoint["state_dict"])
    embeddings = node_embeddings(model, graph)
    users = torch.cat([embeddings[view][0] for view in model.views], dim=1)
    items_ = torch.cat([embeddings[view][1] for view in model.views], dim=1)
    return graph, model, users, items_


def evaluate(graph, users, items, split) -> dict:
    from pmg_tasks.preferences.evaluate import ranking_metrics, ranking_task

    metrics = ranking_metrics(users, items, ranking_task(graph, split.train, split.test))
    return {"recall@20": round(metrics["recall@20"], 4), "ndcg@20": round(metrics["ndcg@20"], 4)}


def textbook_lightgcn(split, epochs: int, seed: int = 0) -> list[tuple[float, float]]:
    """PyG's LightGCN in PyG's example loop; `(cumulative training seconds, test Recall@20)` per epoch."""
    import torch
    from torch_geometric.nn import LightGCN

    from pmg_tasks.preferences.evaluate import ranking_metrics, ranking_task
    from pmg_tasks.preferences.graph import interaction_graph

    torch.manual_seed(seed)
    graph = interaction_graph(split.train[["user_id", "item_id"]].assign(weight=1.0))
    task = ranking_task(graph, split.train, split.test)
    num_users, num_items = graph.num_users, graph.num_items
    users, items = torch.tensor(graph.edge_user), torch.tensor(graph.edge_item) + num_users
    edge_index = torch.cat([torch.stack([users, items]), torch.stack([items, users])], dim=1)
    model = LightGCN(num_nodes=num_users + num_items, embedding_dim=64, num_layers=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = torch.utils.data.DataLoader(range(graph.num_edges), shuffle=True, batch_size=8192)
    curve, elapsed = [], 0.0
    for _ in range(epochs):
        started = time.perf_counter()
        for index in loader:
            positive = torch.stack([users[index], items[index]])
            negative = torch.stack(
                [users[index], torch.randint(num_users, num_users + num_items, (len(index),))]
            )
            label_index = torch.cat([positive, negative], dim=1)
            optimizer.zero_grad()
            positive_rank, negative_rank = model(edge_index, label_index).chunk(2)
            loss = model.recommendation_loss(positive_rank, negative_rank, node_id=label_index.unique())
            loss.backward()
            optimizer.step()
        elapsed += time.perf_counter() - started
        with torch.no_grad():
            embedding = model.get_embedding(edge_index)
        recall = ranking_metrics(embedding[:num_users], embedding[num_users:], task)["recall@20"]
        curve.append((round(elapsed, 2), round(recall, 4)))
    return curve


def our_curve(settings, split, events, items, epochs: int) -> list[tuple[float, float]]:
    """`train_bpr` with the stage's settings on all training positives, test Recall@20 after every epoch."""
    import torch

    from pmg_tasks.preferences.evaluate import ranking_task
    from pmg_tasks.preferences.graph import build_interaction_graph
    from pmg_tasks.preferences.model import ModalPreferenceGNN
    from pmg_tasks.preferences.train import train_bpr

    graph = build_interaction_graph(events, items, recency_half_life=settings.preferences.recency_half_life)
    dims = {view: features.shape[1] for view, features in graph.item_features.items()}
    model = ModalPreferenceGNN(graph.num_users, graph.num_items, settings.preferences.dim, settings.preferences.layers, dims)
    model.reset_parameters(torch.Generator().manual_seed(settings.seed))
    result = train_bpr(
        model, graph, epochs=epochs, seed=settings.seed, learning_rate=settings.preferences.learning_rate,
        batch_size=settings.preferences.batch_size, l2=settings.preferences.l2,
        negative_candidates=settings.preferences.negative_candidates,
        # The test set as the "holdout" only to read the curve; patience never runs out.
        validation=ranking_task(graph, split.train, split.test), patience=epochs + 1,
    )  # fmt: skip
    return [(round(s, 2), round(r, 4)) for s, r in zip(result.seconds, result.validation, strict=True)]


def seconds_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((seconds for seconds, recall in curve if recall >= target), None)


def token_grid(users, items, graph, split, seed: int) -> list[dict]:
    """Recall@20 from token reconstructions over levels x codes, against the full user embeddings."""
    import torch.nn.functional as F

    from pmg_tasks.preferences.quantize import (
        assign_codes,
        fit_residual_codebooks,
        reconstruct,
        reconstruction_error,
    )

    active = graph.active_users()
    preferences = F.normalize(users[active], dim=1)
    rows = []
    for levels in GRID_LEVELS:
        for codes in GRID_CODES:
            codebooks = fit_residual_codebooks(preferences, levels, codes, seed=seed)
            assigned = assign_codes(preferences, codebooks)
            rebuilt = users.clone()
            rebuilt[active] = reconstruct(assigned, codebooks)
            metrics = evaluate(graph, rebuilt, items, split)
            rows.append(
                {
                    "levels": levels,
                    "codes": codes,
                    "segments": len({tuple(row) for row in assigned.tolist()}),
                    "reconstruction_error": round(reconstruction_error(preferences, codebooks), 4),
                    **metrics,
                }
            )
    return rows


def mean(values) -> float:
    return round(statistics.mean(values), 4)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="MovieLens folder (default: PMG_MOVIELENS_DIR)"
    )
    parser.add_argument("--textbook-epochs", type=int, default=60)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    data_dir = args.data or movielens_dir()
    if not (data_dir / "ratings.csv").is_file():
        print(f"MovieLens is not at {data_dir}: set PMG_MOVIELENS_DIR; nothing measured")
        return 0

    import torch

    from pmg_tasks.layout import run_key
    from pmg_tasks.preferences.baselines import popularity_vectors, train_bpr_mf
    from pmg_tasks.preferences.graph import interaction_graph
    from pmg_tasks.preferences.movielens import load_movielens, movielens_split, user_tag_keywords
    from pmg_tasks.store import open_store, read_frame, write_table

    torch.set_num_threads(THREADS)
    results: dict = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": THREADS, "python": platform.python_version(),
                    "torch": torch.__version__, "load_average_start": load_average()},
    }  # fmt: skip
    data = load_movielens(data_dir)
    split = movielens_split(data)
    events, items = as_events(split.train), as_items(data.movies)
    results["split"] = {
        "train": len(split.train),
        "test": len(split.test),
        "test_users": split.test["user_id"].nunique(),
    }
    print(f"MovieLens split: {results['split']}; load {load_average()}")

    # 1. Quality: baselines and the GNN, same split.
    plain = interaction_graph(split.train[["user_id", "item_id"]].assign(weight=1.0))
    quality = {"popularity": evaluate(plain, *popularity_vectors(plain), split)}
    started = time.perf_counter()
    quality["bpr_mf"] = {
        **evaluate(plain, *train_bpr_mf(plain), split),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"popularity {quality['popularity']}; BPR-MF {quality['bpr_mf']}")

    runs, models = [], []
    with tempfile.TemporaryDirectory(prefix="pmg-bench-gnn-") as tmp:
        for seed in SEEDS:
            settings = stage_settings(Path(tmp) / f"seed-{seed}", seed=seed)
            report = run_night(settings, NIGHT_3, events, items)
            graph, _, users, item_vectors = stage_embeddings(settings, NIGHT_3, events, items)
            run = {"seed": seed, **evaluate(graph, users, item_vectors, split), "train_seconds": report["train_seconds"],
                   "stage_seconds": report["wall_seconds"], "epochs": report["epochs"], "best_epoch": report["best_epoch"]}  # fmt: skip
            runs.append(run)
            models.append((settings, report, graph, users, item_vectors))
            print(f"GNN (stage, seed {seed}): {run}")
        quality["gnn"] = {
            "recall@20": mean(r["recall@20"] for r in runs),
            "ndcg@20": mean(r["ndcg@20"] for r in runs),
            "recall@20_min": min(r["recall@20"] for r in runs),
            "train_seconds_mean": mean(r["train_seconds"] for r in runs),
            "train_seconds_max": max(r["train_seconds"] for r in runs),
            "runs": runs,
        }
        results["quality"] = quality

        # 4. Tokens: what each quantizer keeps of the seeds' models, and the stage default's segments.
        settings, report = models[0][0], models[0][1]
        grids = [token_grid(users, item_vectors, graph, split, seed) for seed, (_, _, graph, users, item_vectors)
                 in zip(SEEDS, models, strict=True)]  # fmt: skip
        full_recall = mean(r["recall@20"] for r in runs)
        grid = []
        for cells in zip(*grids, strict=True):
            recall = mean(cell["recall@20"] for cell in cells)
            grid.append({"levels": cells[0]["levels"], "codes": cells[0]["codes"],
                         "segments": mean(cell["segments"] for cell in cells),
                         "reconstruction_error": mean(cell["reconstruction_error"] for cell in cells),
                         "recall@20": recall, "ndcg@20": mean(cell["ndcg@20"] for cell in cells),
                         "recall_kept": round(recall / full_recall, 3)})  # fmt: skip
        results["tokens"] = {
            "default": {"levels": settings.preferences.token_levels, "codes": settings.preferences.token_codes,
                        "segments": mean(m[1]["segments"] for m in models), "users": report["users"]},
            "full_embedding_recall@20": full_recall,
            "grid": grid,
        }  # fmt: skip
        for row in grid:
            print(f"tokens L={row['levels']} K={row['codes']}: {row}")
        # Descriptors with the users' own tags as their keywords, as the keyword stage would give them.
        tokens_store = open_store(settings)
        write_table(tokens_store, run_key(NIGHT_3, "keywords.parquet"), user_tag_keywords(data))
        run_night(settings, NIGHT_3, events, items)
        descriptors = read_frame(tokens_store, run_key(NIGHT_3, "token_descriptors.parquet"))
        level_0 = descriptors[descriptors["level"] == 0].sort_values("users", ascending=False).head(6)
        results["tokens"]["descriptors_sample"] = [
            {"token": r.token, "users": int(r.users), "description": r.description}
            for r in level_0.itertuples()
        ]

        # 3. Warm start: nights of 98%, 99% and 100% of the training positives (newest last); night 1 is a
        # full retrain, nights 2 and 3 warm starts, each adding 1%. Night 3 against the full retrains above.
        cut = split.train["timestamp"]
        nights = [(NIGHT_1, split.train[cut <= cut.quantile(0.98)]), (NIGHT_2, split.train[cut <= cut.quantile(0.99)]),
                  (NIGHT_3, split.train)]  # fmt: skip
        warm_runs = []
        for seed, run in zip(SEEDS, runs, strict=True):
            warm_settings = stage_settings(Path(tmp) / f"warm-{seed}", seed=seed)
            reports = [run_night(warm_settings, ds, as_events(positives), items) for ds, positives in nights]
            graph, _, users, item_vectors = stage_embeddings(warm_settings, NIGHT_3, events, items)
            warm_runs.append({
                "seed": seed, **evaluate(graph, users, item_vectors, split),
                "train_seconds": reports[2]["train_seconds"], "full_retrain_seconds": run["train_seconds"],
                "new_interactions": len(nights[2][1]) - len(nights[1][1]),
                "new_users": reports[2]["new_users"], "new_items": reports[2]["new_items"],
                "churn_warm_after_warm": reports[2]["token_churn"], "churn_warm_after_full": reports[1]["token_churn"],
            })  # fmt: skip
            print(f"warm start (seed {seed}): {warm_runs[-1]}")
        results["warm_start"] = {
            "recall@20": mean(r["recall@20"] for r in warm_runs),
            "ndcg@20": mean(r["ndcg@20"] for r in warm_runs),
            "full_retrain_recall@20": quality["gnn"]["recall@20"],
            "recall_ratio": round(mean(r["recall@20"] for r in warm_runs) / quality["gnn"]["recall@20"], 3),
            "train_seconds": mean(r["train_seconds"] for r in warm_runs),
            "full_retrain_seconds": quality["gnn"]["train_seconds_mean"],
            "time_share": round(mean(r["train_seconds"] for r in warm_runs) / quality["gnn"]["train_seconds_mean"], 3),
            "token_churn_warm_after_warm": mean(r["churn_warm_after_warm"]["share"] for r in warm_runs),
            "token_churn_warm_after_full": mean(r["churn_warm_after_full"]["share"] for r in warm_runs),
            "runs": warm_runs,
        }  # fmt: skip
        print(f"warm start: { {k: v for k, v in results['warm_start'].items() if k != 'runs'} }")

        # 2. Speed: time to the textbook loop's best Recall@20, in the same run.
        textbook = textbook_lightgcn(split, args.textbook_epochs)
        target = max(recall for _, recall in textbook)
        ours = our_curve(models[0][0], split, events, items, epochs=30)
        results["speed"] = {
            "target_recall@20": target,
            "textbook_seconds": seconds_to_reach(textbook, target),
            "ours_seconds": seconds_to_reach(ours, target),
            "textbook_seconds_per_epoch": round(textbook[-1][0] / len(textbook), 2),
            "ours_seconds_per_epoch": round(ours[-1][0] / len(ours), 2),
            "textbook_curve": textbook,
            "ours_curve": ours,
        }
        if results["speed"]["ours_seconds"]:
            results["speed"]["speedup"] = round(
                results["speed"]["textbook_seconds"] / results["speed"]["ours_seconds"], 1
            )
        print(f"speed: { {k: v for k, v in results['speed'].items() if not k.endswith('curve')} }")

    results["machine"]["load_average_end"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"wrote {args.out}")
    return 0


def table(results: dict) -> str:
    quality = results["quality"]
    lines = [
        "| model | Recall@20 | NDCG@20 | training |",
        "|---|---|---|---|",
        f"| popularity | {quality['popularity']['recall@20']:.4f} | {quality['popularity']['ndcg@20']:.4f} | - |",
        f"| BPR-MF (64-d, 200 epochs) | {quality['bpr_mf']['recall@20']:.4f} | {quality['bpr_mf']['ndcg@20']:.4f} "
        f"| {quality['bpr_mf']['seconds']} s |",
        f"| preference GNN (stage defaults, mean of {len(quality['gnn']['runs'])} seeds) "
        f"| {quality['gnn']['recall@20']:.4f} | {quality['gnn']['ndcg@20']:.4f} "
        f"| <= {quality['gnn']['train_seconds_max']} s |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
