import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pmg_tasks.preferences.graph import IMAGE_VIEW, TEXT_VIEW, build_interaction_graph
from pmg_tasks.preferences.images import HISTOGRAM_WIDTH, image_histogram, item_image_features
from pmg_tasks.store import LocalStore


def png(colour, stripes: bool = False) -> bytes:
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:] = colour
    if stripes:
        pixels[:, ::4] = 255 - np.array(colour, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_histogram_is_a_deterministic_unit_vector():
    vector = image_histogram(png((200, 30, 30)))

    assert vector.shape == (HISTOGRAM_WIDTH,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(vector, image_histogram(png((200, 30, 30))))


def test_histogram_tells_colours_and_textures_apart():
    red, red_again, blue = (
        image_histogram(png((200, 30, 30))),
        image_histogram(png((190, 35, 25))),
        image_histogram(png((30, 30, 200))),
    )
    striped = image_histogram(png((200, 30, 30), stripes=True))

    assert red @ red_again > 0.99
    assert red @ blue < 0.5
    assert red @ striped < red @ red_again


def test_images_come_from_store_keys_and_store_urls_only(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put_bytes("catalog/a.png", png((200, 30, 30)))
    store.put_bytes("catalog/b.png", png((30, 30, 200)))
    store.put_bytes("catalog/broken.png", b"not an image")
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d", "e", "f", "g"],
            "image_uri": [
                "catalog/a.png",
                store.url("catalog/b.png"),
                "https://example.com/c.png",  # the batch reads no network
                "catalog/missing.png",
                "catalog/broken.png",
                "../outside.png",  # never a way out of the store
                None,
            ],
        }
    )
    features = item_image_features(items, store)

    assert sorted(features) == ["a", "b"]
    np.testing.assert_array_equal(features["a"], image_histogram(png((200, 30, 30))))


def test_clip_needs_a_model(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("a.png", png((1, 2, 3)))
    with pytest.raises(ValueError, match="models.clip"):
        item_image_features(pd.DataFrame({"item_id": ["a"], "image_uri": ["a.png"]}), store, encoder="clip")


def test_graph_has_an_image_view_only_over_items_with_images(events, items):
    with_image = {item: np.ones(4, dtype=np.float32) / 2 for item in items["item_id"][:8]}
    graph = build_interaction_graph(events, items, image_features=with_image)

    assert set(graph.item_features) == {TEXT_VIEW, IMAGE_VIEW}
    in_view = graph.item_in_view[IMAGE_VIEW]
    assert [graph.item_ids[row] for row in np.flatnonzero(in_view)] == sorted(
        set(with_image) & set(graph.item_ids)
    )
    assert not graph.item_features[IMAGE_VIEW][~in_view].any()
    # the image view's graph: only edges to items with images; the text view keeps every edge
    assert in_view[graph.edge_item[graph.view_edges(IMAGE_VIEW)]].all()
    assert len(graph.view_edges(TEXT_VIEW)) == graph.num_edges
    assert set(graph.view_users(IMAGE_VIEW)) < set(graph.active_users())
    edge_index, _ = graph.edge_index(IMAGE_VIEW)
    assert edge_index.shape[1] == 2 * len(graph.view_edges(IMAGE_VIEW))


def test_no_image_view_without_images(events, items):
    graph = build_interaction_graph(events, items, image_features={"not-in-graph": np.ones(4)})

    assert set(graph.item_features) == {TEXT_VIEW}
