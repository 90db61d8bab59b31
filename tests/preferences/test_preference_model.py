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
    # Against uniform negatives: hard negatives get harder as the model learns, so their loss falls less.
    losses = train_bpr(new_model(graph), graph, epochs=30, seed=0, negative_candidates=1).losses

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


def test_early_stopping_keeps_the_best_epochs_weights(held_out, items):
    from pmg_tasks.preferences.evaluate import RankingTask
    from pmg_tasks.preferences.train import validation_recall

    graph, users, held = held_out
    task = RankingTask(
        graph.num_users,
        graph.num_items,
        torch.tensor(graph.edge_user),
        torch.tensor(graph.edge_item),
        users,
        held,
    )
    model = new_model(graph)
    result = train_bpr(model, graph, epochs=60, seed=0, validation=task, patience=3)

    assert len(result.validation) == result.epochs == len(result.losses) == len(result.seconds)
    assert result.validation[result.best_epoch - 1] == max(result.validation)
    assert result.epochs <= result.best_epoch + 3
    assert result.stopped_early == (result.epochs < 60)
    assert validation_recall(model, graph_tensors(graph), task) == pytest.approx(max(result.validation))


def test_the_hardest_candidate_is_the_negative(events, items):
    from pmg_tasks.preferences.train import hardest_negatives

    graph = build_interaction_graph(events, items)
    model = new_model(graph)
    tensors = graph_tensors(graph)
    embeddings = model(tensors.adjacency, tensors.item_features)
    users = torch.tensor([0, 1, 2])
    candidates = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]])
    chosen = hardest_negatives(model, embeddings, users, candidates)

    scores = model.score(embeddings, users.repeat_interleave(4), candidates.flatten()).view(3, 4)
    assert chosen.tolist() == candidates.gather(1, scores.argmax(dim=1, keepdim=True)).flatten().tolist()


def test_the_image_view_adds_nothing_for_items_without_an_image(events, items):
    import numpy as np

    from pmg_tasks.preferences.graph import IMAGE_VIEW

    with_image = {item: np.full(4, 0.5, dtype=np.float32) for item in items["item_id"][:8]}
    graph = build_interaction_graph(events, items, image_features=with_image)
    model = ModalPreferenceGNN(
        graph.num_users, graph.num_items, 16, 2, {TEXT_VIEW: TEXT_BUCKETS, IMAGE_VIEW: 4}
    )
    tensors = graph_tensors(graph)
    _, image_items = model.split(
        model(tensors.adjacency, tensors.item_features, tensors.item_mask)[IMAGE_VIEW]
    )

    in_view = torch.tensor(graph.item_in_view[IMAGE_VIEW])
    assert not image_items[~in_view].any()
    assert image_items[in_view].abs().sum(dim=1).gt(0).all()
    result = train_bpr(model, graph, epochs=3, seed=0)
    assert all(loss == loss for loss in result.losses)  # no NaN from the masked view
