import numpy as np
import pandas as pd
import pytest

from pmg_tasks.preferences.graph import TEXT_VIEW, build_interaction_graph, item_text_features


def frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type"])


def edges(graph):
    users, items = graph.user_ids, graph.item_ids
    return {
        (users[u], items[i]): w
        for u, i, w in zip(graph.edge_user, graph.edge_item, graph.edge_weight, strict=True)
    }


def test_id_maps_are_sorted_and_do_not_depend_on_event_order(events, items):
    graph = build_interaction_graph(events, items)
    shuffled = build_interaction_graph(events.sample(frac=1.0, random_state=7), items)

    assert list(graph.user_ids) == sorted(events["user_id"].unique())
    assert list(graph.item_ids) == sorted(events["item_id"].unique())
    assert shuffled.user_ids == graph.user_ids and shuffled.item_ids == graph.item_ids
    assert edges(shuffled) == edges(graph)
    assert graph.user_index()[graph.user_ids[3]] == 3


def test_known_ids_join_the_maps_without_edges():
    graph = build_interaction_graph(
        frame([("u2", "i2", "view")]), known_user_ids=["u1", "u3"], known_item_ids=["i1"]
    )

    assert graph.user_ids == ("u1", "u2", "u3")
    assert graph.item_ids == ("i1", "i2")
    assert graph.active_users().tolist() == [1]


def test_edge_weights_follow_event_type():
    graph = build_interaction_graph(
        frame(
            [
                ("u1", "i1", "view"),
                ("u1", "i2", "click"),
                ("u2", "i1", "add_to_cart"),
                ("u2", "i2", "purchase"),
            ]
        )
    )

    assert edges(graph) == {("u1", "i1"): 1.0, ("u1", "i2"): 2.0, ("u2", "i1"): 3.0, ("u2", "i2"): 4.0}


def test_repeated_interactions_aggregate_into_one_edge():
    graph = build_interaction_graph(
        frame([("u1", "i1", "view"), ("u1", "i1", "view"), ("u1", "i1", "click"), ("u1", "i2", "view")])
    )

    assert edges(graph) == {("u1", "i1"): 4.0, ("u1", "i2"): 1.0}


def test_edge_index_is_undirected_over_users_then_items():
    graph = build_interaction_graph(frame([("u1", "i1", "purchase"), ("u2", "i1", "view")]))
    edge_index, edge_weight = graph.edge_index()

    pairs = {(s, t): w for (s, t), w in zip(edge_index.t().tolist(), edge_weight.tolist(), strict=True)}
    # users are nodes 0..1, the item is node 2
    assert pairs == {(0, 2): 4.0, (2, 0): 4.0, (1, 2): 1.0, (2, 1): 1.0}


def test_text_features_make_items_of_a_cluster_alike(items):
    ids = items["item_id"].tolist() + ["item-missing"]
    features = item_text_features(items, ids)

    assert features.shape == (len(ids), 256)
    assert np.allclose(np.linalg.norm(features[:-1], axis=1), 1.0)
    assert not features[-1].any(), "an item missing from the catalog has no text to speak for it"
    similarity = features[:-1] @ features[:-1].T
    cluster = np.arange(len(items)) % 4
    same = cluster[:, None] == cluster[None, :]
    off_diagonal = ~np.eye(len(items), dtype=bool)
    assert similarity[same & off_diagonal].mean() > similarity[~same].mean() + 0.3
    np.testing.assert_array_equal(features, item_text_features(items, ids))


def test_graph_carries_the_text_view(events, items):
    graph = build_interaction_graph(events, items)

    assert graph.item_features[TEXT_VIEW].shape == (graph.num_items, 256)


def test_unknown_event_type_is_named():
    with pytest.raises(ValueError, match="teleport"):
        build_interaction_graph(frame([("u1", "i1", "teleport")]))


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="event_type"):
        build_interaction_graph(pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"]}))


def test_recency_halves_an_edge_every_half_life_of_later_interactions():
    events = frame(
        [("u1", "i1", "view"), ("u1", "i2", "view"), ("u1", "i3", "purchase"), ("u2", "i1", "view")]
    )
    events["event_ts"] = pd.to_datetime(
        ["2026-11-20 10:00", "2026-11-20 09:00", "2026-11-20 11:00", "2026-11-01 08:00"]
    )
    graph = build_interaction_graph(events, recency_half_life=1.0)

    # u1's order in time: i2, i1, i3; each later interaction halves an edge once more
    assert edges(graph) == {("u1", "i3"): 4.0, ("u1", "i1"): 0.5, ("u1", "i2"): 0.25, ("u2", "i1"): 1.0}


def test_recency_needs_event_times():
    with pytest.raises(ValueError, match="event_ts"):
        build_interaction_graph(frame([("u1", "i1", "view")]), recency_half_life=20.0)
