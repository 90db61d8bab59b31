"""Stage 5 of the nightly flow: the preference graph and the users' discrete preference tokens (DPPMG).

Reads the night's valid events and the item catalog, trains the modal-specific GNN warm from the last
model version, quantizes each user's text-view preference into tokens, and publishes:

- `runs/ds=<ds>/preference_tokens.parquet`: `user_id`, `tokens` (list of strings), `segment_id`;
- `runs/ds=<ds>/preference_graph.json`: what was trained and how well it quantized;
- `models/gnn/<ds>/checkpoint.pt` and `codebooks.pt`, then `models/gnn/LATEST` (written last, so a night
  that fails anywhere leaves the previous version in force).

Torch is imported inside the function: Airflow imports this module when it parses the DAG.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from typing import TYPE_CHECKING, Any

from pmg_tasks.layout import GNN_LATEST_KEY, GNN_MODELS_PREFIX, gnn_model_prefix, run_key
from pmg_tasks.store import ObjectStore, open_store, read_frame, write_json, write_table

if TYPE_CHECKING:
    from pmg_tasks.preferences.graph import InteractionGraph
    from pmg_tasks.preferences.model import ModalPreferenceGNN
    from pmg_tasks.settings import Settings

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CODEBOOKS_FILE = "codebooks.pt"

# A warm model only has to absorb one night of change: fine-tuning with smaller steps keeps the tokens of
# users whose tastes did not move, where full-size Adam steps reshuffle the finer token levels.
COLD_LEARNING_RATE = 0.01
WARM_LEARNING_RATE = 0.003


def update_preference_tokens(settings: Settings, ds: str) -> dict[str, Any]:
    """Trains tonight's preference GNN and writes every active user's preference tokens for `ds`.

    Idempotent per `ds`: the version is `ds`, and a rerun starts from the same earlier version with the
    same seed, so it writes the same tokens. Returns the small summary that travels through XCom.
    Raises ValueError naming the input key when the night's events cannot make a graph.
    """
    import torch
    import torch.nn.functional as F

    from pmg_tasks.preferences.graph import TEXT_VIEW, build_interaction_graph
    from pmg_tasks.preferences.model import ModalPreferenceGNN
    from pmg_tasks.preferences.quantize import (
        assign_codes,
        fit_residual_codebooks,
        preference_tokens,
        reconstruction_error,
        segment_id,
    )
    from pmg_tasks.preferences.train import node_embeddings, train_bpr

    _check_ds(ds)
    store = open_store(settings)
    events_key, items_key = run_key(ds, "events_valid.parquet"), run_key(ds, "items.parquet")
    events = read_frame(store, events_key)
    if events.empty:
        raise ValueError(
            f"{events_key} has no rows: validation removed every event, or the extraction window for "
            f"ds={ds} (lookback_days={settings.lookback_days}) is wrong; fix the input, then rerun"
        )
    items = read_frame(store, items_key)

    # 1. The graph, over tonight's ids plus every id the previous version knew.
    parent = warm_start_version(store, ds)
    previous = _load_version(store, parent) if parent else None
    if previous is not None and previous["checkpoint"]["dim"] != settings.gnn_dim:
        log.warning("model version %s has gnn_dim %d; starting cold", parent, previous["checkpoint"]["dim"])
        parent, previous = None, None
    known_users = previous["checkpoint"]["user_ids"] if previous else []
    known_items = previous["checkpoint"]["item_ids"] if previous else []
    try:
        graph = build_interaction_graph(events, items, known_user_ids=known_users, known_item_ids=known_items)
    except ValueError as error:
        raise ValueError(f"{events_key} / {items_key}: {error}") from error
    log.info(
        "preference graph for %s: %d users, %d items, %d edges; warm start from %s",
        ds, graph.num_users, graph.num_items, graph.num_edges, parent or "nothing",
    )  # fmt: skip

    # 2. The model, grown from the previous version's tables, and 3. its BPR training.
    feature_dims = {view: features.shape[1] for view, features in graph.item_features.items()}
    model = ModalPreferenceGNN(
        graph.num_users, graph.num_items, settings.gnn_dim, settings.gnn_layers, feature_dims
    )
    model.reset_parameters(torch.Generator().manual_seed(settings.seed))
    if previous is not None:
        _copy_known_rows(model, graph, previous["checkpoint"])
    learning_rate = WARM_LEARNING_RATE if previous is not None else COLD_LEARNING_RATE
    losses = train_bpr(
        model, graph, epochs=settings.gnn_epochs, seed=settings.seed, learning_rate=learning_rate
    )
    log.info("trained %d epochs: BPR loss %.4f -> %.4f", len(losses), losses[0], losses[-1])

    # 4. Tokens of tonight's users. They name a direction of taste, not how active a user is: unit vectors.
    active = graph.active_users()
    user_embedding, _ = node_embeddings(model, graph)[TEXT_VIEW]
    preferences = F.normalize(user_embedding[torch.tensor(active)], dim=1)
    init = _previous_codebooks(
        previous, TEXT_VIEW, (settings.token_levels, settings.token_codes, settings.gnn_dim)
    )
    codebooks = fit_residual_codebooks(
        preferences, settings.token_levels, settings.token_codes, seed=settings.seed, init=init
    )
    tokens = preference_tokens(assign_codes(preferences, codebooks), TEXT_VIEW)
    segments = [segment_id(user_tokens) for user_tokens in tokens]
    n_segments = len(set(segments))
    error = reconstruction_error(preferences, codebooks)

    # 5. Run outputs, then the model version, then LATEST: whatever fails first leaves LATEST as it was.
    tokens_key = run_key(ds, "preference_tokens.parquet")
    write_table(store, tokens_key, _tokens_table([graph.user_ids[row] for row in active], tokens, segments))
    report = {
        "version": ds,
        "view": TEXT_VIEW,
        "users": len(tokens),
        "items": len(set(graph.edge_item.tolist())),
        "edges": graph.num_edges,
        "model_users": graph.num_users,
        "model_items": graph.num_items,
        "new_users": graph.num_users - len(known_users),
        "new_items": graph.num_items - len(known_items),
        # Items the catalog has no title or categories for: only the graph speaks for them.
        "items_without_text": int((~graph.item_features[TEXT_VIEW].any(axis=1)).sum()),
        "epochs": len(losses),
        "learning_rate": learning_rate,
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "token_levels": settings.token_levels,
        "token_codes": settings.token_codes,
        "reconstruction_error": error,
        "segments": n_segments,
        "warm_started": parent is not None,
        "warm_start_from": parent,
        "codebooks_warm_started": init is not None,
    }
    write_json(store, run_key(ds, "preference_graph.json"), report)
    _save_version(store, ds, model, graph, parent, {TEXT_VIEW: codebooks})
    _publish_latest(store, ds)
    log.info("%d users in %d segments; quantization error %.3f", len(tokens), n_segments, error)
    return {
        "users": len(tokens),
        "segments": n_segments,
        "version": ds,
        "warm_start_from": parent,
        "tokens_key": tokens_key,
    }


def warm_start_version(store: ObjectStore, ds: str) -> str | None:
    """The model version that `ds` trains from, or None for a cold start.

    Nightly that is `LATEST`. When `LATEST` is `ds` itself or later (a rerun or a backfill), it is the newest
    complete version before `ds`, so rerunning a date retraces the same steps instead of building on itself.
    """
    latest = read_latest_version(store)
    if latest is not None and latest < ds:
        return latest
    complete = {
        key.removeprefix(GNN_MODELS_PREFIX).split("/")[0]
        for key in store.list_keys(GNN_MODELS_PREFIX)
        if key.endswith("/" + CODEBOOKS_FILE)
    }
    earlier = sorted(version for version in complete if version < ds)
    return earlier[-1] if earlier else None


def read_latest_version(store: ObjectStore) -> str | None:
    """The model version in force (`models/gnn/LATEST`), or None before the first successful night."""
    if not store.exists(GNN_LATEST_KEY):
        return None
    return store.get_bytes(GNN_LATEST_KEY).decode().strip() or None


def _check_ds(ds: str) -> None:
    # Versions are compared as strings, which orders dates only in this exact spelling.
    try:
        valid = dt.date.fromisoformat(ds).isoformat() == ds
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"ds must be a date written YYYY-MM-DD, got {ds!r}")


def _previous_codebooks(previous: dict | None, view: str, shape: tuple[int, int, int]):
    """Last version's codebooks of `view` when they fit tonight's settings, else None (a fresh fit)."""
    codebooks = previous["codebooks"].get(view) if previous else None
    return codebooks if codebooks is not None and tuple(codebooks.shape) == shape else None


def _load_version(store: ObjectStore, version: str) -> dict[str, dict]:
    import torch

    loaded = {}
    for name, file in (("checkpoint", CHECKPOINT_FILE), ("codebooks", CODEBOOKS_FILE)):
        with store.reading(gnn_model_prefix(version) + file) as path:
            loaded[name] = torch.load(path, weights_only=True)
    return loaded


def _copy_known_rows(model: ModalPreferenceGNN, graph: InteractionGraph, checkpoint: dict) -> None:
    """Puts an earlier model's rows into `model` by id; rows of new ids keep their fresh draw."""
    import torch

    state = checkpoint["state_dict"]
    user_rows = torch.tensor([graph.user_index()[user] for user in checkpoint["user_ids"]], dtype=torch.long)
    item_rows = torch.tensor([graph.item_index()[item] for item in checkpoint["item_ids"]], dtype=torch.long)
    with torch.no_grad():
        for view in model.views:
            if f"user_embedding.{view}.weight" not in state:
                continue  # a view added since that version starts fresh
            model.user_embedding[view].weight[user_rows] = state[f"user_embedding.{view}.weight"]
            model.item_embedding[view].weight[item_rows] = state[f"item_embedding.{view}.weight"]
            projection = state[f"item_projection.{view}.weight"]
            if projection.shape == model.item_projection[view].weight.shape:
                model.item_projection[view].weight.copy_(projection)


def _save_version(
    store: ObjectStore,
    version: str,
    model: ModalPreferenceGNN,
    graph: InteractionGraph,
    parent: str | None,
    codebooks: dict,
) -> None:
    import torch

    checkpoint = {
        "version": version,
        "warm_start_from": parent,
        "user_ids": list(graph.user_ids),
        "item_ids": list(graph.item_ids),
        "dim": model.dim,
        "num_layers": model.num_layers,
        "item_feature_dims": model.item_feature_dims,
        "state_dict": model.state_dict(),
    }
    # Codebooks go second: their presence is what marks a version complete (see warm_start_version).
    for file, payload in ((CHECKPOINT_FILE, checkpoint), (CODEBOOKS_FILE, codebooks)):
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        store.put_bytes(gnn_model_prefix(version) + file, buffer.getvalue())


def _publish_latest(store: ObjectStore, version: str) -> None:
    latest = read_latest_version(store)
    # A backfill of an older date must not pull consumers back to an older model.
    if latest is None or version >= latest:
        store.put_bytes(GNN_LATEST_KEY, version.encode())


def _tokens_table(user_ids: list[str], tokens: list[list[str]], segments: list[str]):
    import pyarrow as pa

    return pa.table(
        {"user_id": user_ids, "tokens": tokens, "segment_id": segments},
        schema=pa.schema(
            [("user_id", pa.string()), ("tokens", pa.list_(pa.string())), ("segment_id", pa.string())]
        ),
    )
