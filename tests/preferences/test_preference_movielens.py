"""The preference GNN on real data: MovieLens ml-latest-small, where it is present (research licence: it
is never in the repository). The full comparison, with BPR-MF and timings, is benchmarks/preference_graph.py."""

from pathlib import Path

import pytest

from pmg_tasks.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DATA = Path(Settings().movielens_dir or REPO.parent / "shared" / "data" / "movielens-latest-small")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA / "ratings.csv").is_file(), reason=f"MovieLens is not at {DATA}"),
]

# BPR-MF's Recall@20 on this protocol: 0.1223 measured for the issue, 0.1199 by the benchmark.
BPR_MF_RECALL = 0.1223


def test_the_stage_beats_popularity_and_bpr_mf(tmp_path):
    from benchmarks.preference_graph import (
        NIGHT_3,
        as_events,
        as_items,
        evaluate,
        run_night,
        stage_embeddings,
    )
    from pmg_tasks.preferences.baselines import popularity_vectors
    from pmg_tasks.preferences.graph import interaction_graph
    from pmg_tasks.preferences.movielens import load_movielens, movielens_split

    data = load_movielens(DATA)
    split = movielens_split(data)
    events, items = as_events(split.train), as_items(data.movies)
    settings = Settings(home=tmp_path, preferences={"full_retrain_weekday": -1})
    run_night(settings, NIGHT_3, events, items)
    graph, _, users, item_vectors = stage_embeddings(settings, NIGHT_3, events, items)
    gnn = evaluate(graph, users, item_vectors, split)
    plain = interaction_graph(split.train[["user_id", "item_id"]].assign(weight=1.0))
    popularity = evaluate(plain, *popularity_vectors(plain), split)

    assert gnn["recall@20"] > popularity["recall@20"] + 0.03
    assert gnn["ndcg@20"] > popularity["ndcg@20"]
    assert gnn["recall@20"] > BPR_MF_RECALL
