import pandas as pd
import pytest
import torch

from pmg_tasks.preferences.graph import TEXT_BUCKETS, TEXT_VIEW, build_interaction_graph
from pmg_tasks.preferences.model import ModalPreferenceGNN
from pmg_tasks.preferences.train import graph_tensors, node_embeddings, ranking_auc, train_bpr


def new_model(graph, seed=0, dim=32, layers=2):
    model = ModalPreferenceGNN(graph.num_users, graph.num_items, dim, layers, {TEXT_VIEW: TEXT_BUCKETS})
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model


@pytest.fixture
def held_out(events, items):
    """The graph without each user's first engaged item, and those (user, item) rows held out."""
    first = events.groupby("user_id")["item_id"].first()
    pairs = pd.MultiIndex.from_arrays([first.index, first.to_numpy()])
    keep = ~pd.MultiIndex.from_frame(events[["user_id", "item_id"]]).isin(pairs)
    # Every catalog item stays a node, so a held-out item is never missing from the graph.
    graph = build_interaction_graph(events[keep], items, known_item_ids=items["item_id"])
    users = torch.tensor([graph.user_index()[u] for u in first.index])
    held = torch.tensor([graph.item_index()[i] for i in first.to_numpy()])
    return graph, users, held


def test_propagation_is_the_layer_mean_of_normalised_neighbour_sums(events, items):
    graph = build_interaction_graph(events, items)
    model = new_model(graph, layers=2)
    tensors = graph_tensors(graph)
    out = model(tensors.adjacency, tensors.item_features)[TEXT_VIEW]

    edge_index, edge_weight = graph.edge_index()
    n = graph.num_users + graph.num_items
    dense = torch.zeros(n, n).index_put_((edge_index[0], edge_index[1]), edge_weight, accumulate=True)
    degree = dense.sum(dim=1).pow(-0.5)
    normalised = degree[:, None] * dense * degree[None, :]
    x0 = model.initial_embedding(TEXT_VIEW, tensors.item_features[TEXT_VIEW])
    x1 = normalised @ x0
    expected = (x0 + x1 + normalised @ x1) / 3
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_bpr_loss_decreases(events, items):
    graph = build_interaction_graph(events, items)
    losses = train_bpr(new_model(graph), graph, epochs=30, seed=0)

    assert len(losses) == 30
    assert losses[-1] < 0.5 * losses[0]


def test_training_ranks_held_out_clustered_items_above_random_ones(held_out):
    graph, users, held = held_out
    untrained = new_model(graph)
    trained = new_model(graph)
    train_bpr(trained, graph, epochs=30, seed=0)

    before = ranking_auc(untrained, graph, users, held)
    after = ranking_auc(trained, graph, users, held)
    assert after > 0.85
    assert after > before + 0.05


def test_training_is_reproducible_with_a_seed(events, items):
    graph = build_interaction_graph(events, items)
    first, second = new_model(graph), new_model(graph)
    train_bpr(first, graph, epochs=5, seed=3)
    train_bpr(second, graph, epochs=5, seed=3)

    for view in first.views:
        torch.testing.assert_close(
            node_embeddings(first, graph)[view][0], node_embeddings(second, graph)[view][0]
        )


def test_ids_without_edges_keep_their_embeddings(events, items):
    graph = build_interaction_graph(events, items, known_user_ids=["zz-carried-user"])
    model = new_model(graph)
    carried = graph.user_index()["zz-carried-user"]
    before = model.user_embedding[TEXT_VIEW].weight[carried].clone()
    train_bpr(model, graph, epochs=5, seed=0)

    torch.testing.assert_close(model.user_embedding[TEXT_VIEW].weight[carried], before)
