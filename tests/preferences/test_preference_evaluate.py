import math

import pandas as pd
import pytest
import torch

from pmg_tasks.preferences.evaluate import RankingTask, ranking_metrics, ranking_task, temporal_holdout
from pmg_tasks.preferences.movielens import load_movielens, movielens_split, user_tag_keywords


def test_holdout_takes_each_users_latest_share_by_time():
    frame = pd.DataFrame(
        {
            "user_id": ["a"] * 10 + ["b"] * 4,
            "item_id": [f"i{k}" for k in range(14)],
            # a's rows arrive out of time order; b has too few rows to hold any out
            "timestamp": [5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 1, 2, 3, 4],
        }
    )
    kept, held = temporal_holdout(frame, 0.25, min_interactions=5)

    # floor(0.25 * 10) = 2 latest of a: timestamps 9 and 10
    assert sorted(held["item_id"]) == ["i2", "i9"]
    assert len(kept) == 12 and set(kept["item_id"]).isdisjoint(held["item_id"])


def test_holdout_ties_keep_input_order():
    frame = pd.DataFrame({"user_id": ["a"] * 5, "item_id": list("vwxyz"), "timestamp": [1, 2, 3, 3, 3]})
    _, held = temporal_holdout(frame, 0.4, min_interactions=5)

    assert list(held["item_id"]) == ["y", "z"]


def test_metrics_match_a_hand_computed_ranking():
    # Two users, four items; item scores are the item vectors themselves (user vectors are 1).
    items = torch.tensor([[4.0], [3.0], [2.0], [1.0]])
    users = torch.ones(2, 1)
    task = RankingTask(
        num_users=2,
        num_items=4,
        seen_users=torch.tensor([0]),
        seen_items=torch.tensor([0]),  # user 0 already has the top item: it must not count
        held_users=torch.tensor([0, 0, 1]),
        held_items=torch.tensor([2, 3, 1]),
    )
    metrics = ranking_metrics(users, items, task, k=2)

    # user 0 ranks [1, 2 | 3]: one of two held items in the top 2, at rank 2
    # user 1 ranks [0, 1 | ...]: its one held item at rank 2
    recall = (1 / 2 + 1 / 1) / 2
    ndcg_0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    ndcg_1 = (1 / math.log2(3)) / 1
    assert metrics["recall@2"] == pytest.approx(recall)
    assert metrics["ndcg@2"] == pytest.approx((ndcg_0 + ndcg_1) / 2)
    assert metrics["users"] == 2


def test_metrics_are_the_same_in_chunks():
    generator = torch.Generator().manual_seed(0)
    users, items = torch.randn(30, 8, generator=generator), torch.randn(50, 8, generator=generator)
    task = RankingTask(
        30, 50,
        torch.randint(30, (200,), generator=generator), torch.randint(50, (200,), generator=generator),
        torch.randint(30, (60,), generator=generator), torch.randint(50, (60,), generator=generator),
    )  # fmt: skip

    assert ranking_metrics(users, items, task, chunk=7) == pytest.approx(ranking_metrics(users, items, task))


@pytest.fixture
def movielens_folder(tmp_path):
    """A MovieLens-shaped folder: 2 users, 7 movies (none of the real data)."""
    ratings = [(1, m, 4.0, 100 + m) for m in range(1, 7)] + [(1, 7, 2.0, 200)]
    ratings += [(2, m, 5.0, 300 + m) for m in (1, 2, 3, 6)]
    pd.DataFrame(ratings, columns=["userId", "movieId", "rating", "timestamp"]).to_csv(
        tmp_path / "ratings.csv", index=False
    )
    movies = [(m, f"Movie {m} (2000)", "Drama|Crime" if m % 2 else "(no genres listed)") for m in range(1, 8)]
    pd.DataFrame(movies, columns=["movieId", "title", "genres"]).to_csv(tmp_path / "movies.csv", index=False)
    tags = [(1, 1, "Noir", 1), (1, 3, "noir ", 2), (1, 5, "heist", 3), (2, 1, "classic", 4)]
    pd.DataFrame(tags, columns=["userId", "movieId", "tag", "timestamp"]).to_csv(
        tmp_path / "tags.csv", index=False
    )
    return tmp_path


def test_movielens_split_follows_the_protocol(movielens_folder):
    data = load_movielens(movielens_folder)
    split = movielens_split(data)

    # user 1: six positives (the 2.0 rating is not one); floor(0.2 * 6) = 1 latest is test
    assert split.test[["user_id", "item_id"]].values.tolist() == [["1", "6"]]
    # user 2 has four positives: fewer than 5, all train
    assert sorted(split.train.loc[split.train["user_id"] == "2", "item_id"]) == ["1", "2", "3", "6"]
    assert "7" not in set(split.train["item_id"])
    assert data.movies.set_index("item_id").loc["2", "categories"] is None


def test_movielens_drops_test_items_never_seen_in_training(movielens_folder):
    ratings = pd.read_csv(movielens_folder / "ratings.csv")
    ratings.loc[(ratings["movieId"] == 6) & (ratings["userId"] == 1), "movieId"] = 99  # only in the test
    ratings.to_csv(movielens_folder / "ratings.csv", index=False)

    assert movielens_split(load_movielens(movielens_folder)).test.empty


def test_tags_become_each_users_keywords(movielens_folder):
    keywords = user_tag_keywords(load_movielens(movielens_folder)).set_index("user_id")

    assert keywords.loc["1", "preference_keywords"] == ["noir", "heist"]
    assert keywords.loc["2", "preference_keywords"] == ["classic"]


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="ratings.csv"):
        load_movielens(tmp_path)


def test_ranking_task_uses_the_graphs_rows(movielens_folder):
    from pmg_tasks.preferences.graph import interaction_graph

    split = movielens_split(load_movielens(movielens_folder))
    graph = interaction_graph(split.train[["user_id", "item_id"]].assign(weight=1.0))
    task = ranking_task(graph, split.train, split.test)

    assert task.held_users.tolist() == [graph.user_index()["1"]]
    assert task.held_items.tolist() == [graph.item_index()["6"]]
    assert len(task.seen_users) == len(split.train)
