"""Stage 5 of the nightly flow: the preference graph and the users' discrete preference tokens (DPPMG).

Reads the night's valid events and the item catalog (and item images, where the store has them), trains
the modal-specific GNN warm from the last model version (or from scratch on the weekly full-retrain day),
quantizes each user's preference in every view into tokens, describes every token in words, and publishes:

- `runs/ds=<ds>/preference_tokens.parquet`: `user_id`, `tokens` (list of strings, every view's), `segment_id`
  and `segment_tokens` (users sharing the first `segment_levels` tokens of every view form a segment, which
  is what the plan stage generates for), `txt_tokens` and `img_tokens` (each view's), `interactions_hash`;
- `runs/ds=<ds>/token_descriptors.parquet`: per token in use, the keywords and categories behind it;
- `runs/ds=<ds>/preference_graph.json`: what was trained, how well it ranks and quantizes, token churn;
- `models/gnn/<ds>/checkpoint.pt` and `codebooks.pt`, then `models/gnn/LATEST` (written last, so a night
  that fails anywhere leaves the previous version in force).

Torch is imported inside the function: Airflow imports this module when it parses the DAG.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pmg_tasks.layout import GNN_LATEST_KEY, GNN_MODELS_PREFIX, gnn_model_prefix, run_key
from pmg_tasks.store import ObjectStore, open_store, read_frame, write_json, write_table

if TYPE_CHECKING:
    import pandas as pd

    from pmg_tasks.preferences.graph import InteractionGraph
    from pmg_tasks.preferences.model import ModalPreferenceGNN
    from pmg_tasks.preferences.train import TrainingResult
    from pmg_tasks.settings import Settings

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CODEBOOKS_FILE = "codebooks.pt"
TOKENS_FILE = "preference_tokens.parquet"
DESCRIPTORS_FILE = "token_descriptors.parquet"


def update_preference_tokens(settings: Settings, ds: str) -> dict[str, Any]:
    """Trains tonight's preference GNN and writes every active user's preference tokens for `ds`.

    Idempotent per `ds`: the version is `ds`, and a rerun starts from the same earlier version with the
    same seed, so it writes the same tokens. Returns the small summary that travels through XCom.
    Raises ValueError naming the input key when the night's events cannot make a graph.
    """
    from pmg_tasks.preferences.descriptors import describe_tokens, user_categories
    from pmg_tasks.preferences.graph import TEXT_VIEW
    from pmg_tasks.preferences.images import item_image_features
    from pmg_tasks.preferences.quantize import segment_id
    from pmg_tasks.preferences.train import node_embeddings

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
    image_features = item_image_features(
        items, store, encoder=settings.preferences.image_features, clip_model=settings.models.clip
    )

    # 1. Where tonight starts: last night's version (a damaged one passed over for an earlier one), unless
    # tonight retrains from scratch.
    parent, previous, passed_over = _load_warm_start(store, ds)
    resized = previous is not None and previous["checkpoint"]["dim"] != settings.preferences.dim
    if resized:
        log.warning(
            "model version %s has preferences.dim %d; retraining from scratch", parent, previous["checkpoint"]["dim"]
        )
    full_retrain = previous is None or resized or is_full_retrain_day(settings, ds)
    warm = None if full_retrain else previous
    known_users = warm["checkpoint"]["user_ids"] if warm else []
    known_items = warm["checkpoint"]["item_ids"] if warm else []

    started = time.perf_counter()
    with _torch_threads(settings.preferences.torch_threads):
        # 2. The graph, over tonight's ids plus every id the warm version knew.
        source = f"{events_key} / {items_key}"
        graph = _graph(settings, events, items, image_features, known_users, known_items, source)
        log.info(
            "preference graph for %s: %d users, %d items, %d edges, views %s; %s",
            ds, graph.num_users, graph.num_items, graph.num_edges, list(graph.item_features),
            f"warm start from {parent}" if warm else "full retrain",
        )  # fmt: skip

        # 3. The model, grown from the warm version's tables, and its BPR training.
        model, training = _train(settings, graph, events, items, image_features, warm)
        seconds = time.perf_counter() - started
        log.info(
            "trained %d epochs in %.1f s (best %d, validation Recall@20 %s): BPR loss %.4f -> %.4f",
            training.epochs, seconds, training.best_epoch, _best(training), training.losses[0], training.losses[-1],
        )  # fmt: skip

        # 4. Tokens of tonight's users in every view, numbered like last night's where they can be.
        embeddings = node_embeddings(model, graph)
        last_tokens = _previous_tokens(store, parent)
        view_tokens, codebooks, quantization = {}, {}, {}
        for view in model.views:
            view_tokens[view], codebooks[view], quantization[view] = _quantize_view(
                settings, graph, view, embeddings[view][0], warm, last_tokens
            )

    active = [graph.user_ids[row] for row in graph.active_users()]
    tokens = {user: [t for view in model.views for t in view_tokens[view].get(user, [])] for user in active}
    # A segment is a coarse taste (the first levels of every view); the finer tokens stay the user's own.
    levels = settings.preferences.segment_levels
    segment_tokens = {
        user: [t for view in model.views for t in view_tokens[view].get(user, [])[:levels]] for user in active
    }
    segments = {user: segment_id(coarse) for user, coarse in segment_tokens.items()}
    hashes = interactions_hashes(events)
    churn = token_churn(last_tokens, tokens, hashes)

    # 5. Every token in words.
    keywords_key = run_key(ds, "keywords.parquet")
    keywords = None
    if store.exists(keywords_key):
        frame = read_frame(store, keywords_key)
        keywords = dict(zip(frame["user_id"], frame["preference_keywords"], strict=True))
    descriptors = describe_tokens(
        {user: _token_parts(user_tokens) for user, user_tokens in tokens.items()},
        user_categories(graph, items),
        keywords,
    )

    # 6. Run outputs, then the model version, then LATEST: whatever fails first leaves LATEST as it was.
    tokens_key = run_key(ds, TOKENS_FILE)
    write_table(store, tokens_key, _tokens_table(active, tokens, segment_tokens, segments, view_tokens, hashes))
    write_table(store, run_key(ds, DESCRIPTORS_FILE), descriptors)
    n_segments = len(set(segments.values()))
    report = {
        "version": ds,
        "views": list(model.views),
        "view": TEXT_VIEW,
        "users": len(active),
        "items": len(set(graph.edge_item.tolist())),
        "edges": graph.num_edges,
        "model_users": graph.num_users,
        "model_items": graph.num_items,
        "new_users": graph.num_users - len(known_users),
        "new_items": graph.num_items - len(known_items),
        # Items the catalog has no title or categories for: only the graph speaks for them.
        "items_without_text": int((~graph.item_features[TEXT_VIEW].any(axis=1)).sum()),
        "items_with_image": len(image_features),
        "full_retrain": full_retrain,
        "epochs": training.epochs,
        "best_epoch": training.best_epoch,
        "stopped_early": training.stopped_early,
        "validation_recall@20": max(training.validation) if training.validation else None,
        "train_seconds": round(seconds, 3),
        "learning_rate": settings.preferences.warm_learning_rate if warm else settings.preferences.learning_rate,
        "first_loss": training.losses[0],
        "final_loss": training.losses[-1],
        "token_levels": settings.preferences.token_levels,
        "token_codes": settings.preferences.token_codes,
        "quantization": quantization,
        "reconstruction_error": quantization[TEXT_VIEW]["reconstruction_error"],
        "segments": n_segments,
        "segment_levels": levels,
        "token_churn": churn,
        "descriptors": len(descriptors),
        "descriptors_use_keywords": keywords is not None,
        "warm_started": warm is not None,
        # Versions that could not be read back, newest first: tonight started from an earlier one instead.
        "damaged_versions_passed_over": passed_over,
        "warm_start_from": parent if warm else None,
        "previous_version": parent,
        "codebooks_warm_started": all(q["codebooks_warm_started"] for q in quantization.values()),
    }
    write_json(store, run_key(ds, "preference_graph.json"), report)
    _save_version(store, ds, model, graph, parent, codebooks)
    _publish_latest(store, ds)
    log.info(
        "%d users in %d segments; token churn %s; %d token descriptors%s",
        len(active), n_segments, churn["share"], len(descriptors),
        "" if keywords is not None else " (categories only: keywords.parquet is not there yet)",
    )  # fmt: skip
    return {
        "users": len(active),
        "segments": n_segments,
        "version": ds,
        "warm_start_from": parent if warm else None,
        "damaged_versions_passed_over": [entry["version"] for entry in passed_over],
        "tokens_key": tokens_key,
    }


def is_full_retrain_day(settings: Settings, ds: str) -> bool:
    """Whether `ds` is the weekday (`preferences.full_retrain_weekday`) on which the GNN retrains from scratch."""
    return dt.date.fromisoformat(ds).weekday() == settings.preferences.full_retrain_weekday


def interactions_hashes(events: pd.DataFrame) -> dict[str, str]:
    """User id -> a hash of what they did in the window (items and event types, in any order): users whose
    hash is the same on two nights are unchanged, and their tokens should be too."""
    columns = ["user_id", "item_id", "event_type"]
    pairs = events[columns].astype(str).sort_values(columns)
    texts = (pairs["item_id"] + "\x1f" + pairs["event_type"]).groupby(pairs["user_id"]).agg("\x1e".join)
    return {user: hashlib.blake2b(text.encode(), digest_size=8).hexdigest() for user, text in texts.items()}


def token_churn(
    previous: pd.DataFrame | None, tokens: dict[str, list[str]], hashes: dict[str, str]
) -> dict[str, Any]:
    """The share of unchanged users (same interactions hash both nights) whose tokens changed."""
    if previous is None or "interactions_hash" not in previous.columns:
        return {"unchanged_users": 0, "changed_tokens": 0, "share": None}
    unchanged = [
        (user, list(old))
        for user, old, old_hash in zip(
            previous["user_id"], previous["tokens"], previous["interactions_hash"], strict=True
        )
        if user in tokens and hashes.get(user) == old_hash
    ]
    changed = sum(tokens[user] != old for user, old in unchanged)
    return {
        "unchanged_users": len(unchanged),
        "changed_tokens": changed,
        "share": round(changed / len(unchanged), 4) if unchanged else None,
    }


def _graph(
    settings: Settings, events, items, image_features, known_users, known_items, source: str
) -> InteractionGraph:
    from pmg_tasks.preferences.graph import build_interaction_graph

    try:
        return build_interaction_graph(
            events,
            items,
            known_user_ids=known_users,
            known_item_ids=known_items,
            recency_half_life=settings.preferences.recency_half_life,
            image_features=image_features,
        )
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from error


def _train(
    settings: Settings, graph: InteractionGraph, events, items, image_features, warm: dict | None
) -> tuple[ModalPreferenceGNN, TrainingResult]:
    """A warm night fine-tunes last night's weights on the whole graph for a few epochs; a full retrain
    starts fresh and stops early on each user's latest interactions, held out by time."""
    import torch

    from pmg_tasks.preferences.evaluate import ranking_task, temporal_holdout
    from pmg_tasks.preferences.model import ModalPreferenceGNN
    from pmg_tasks.preferences.train import train_bpr

    feature_dims = {view: features.shape[1] for view, features in graph.item_features.items()}
    model = ModalPreferenceGNN(
        graph.num_users, graph.num_items, settings.preferences.dim, settings.preferences.layers, feature_dims
    )
    model.reset_parameters(torch.Generator().manual_seed(settings.seed))
    common = {
        "seed": settings.seed,
        "batch_size": settings.preferences.batch_size,
        "l2": settings.preferences.l2,
        "negative_candidates": settings.preferences.negative_candidates,
    }
    if warm is not None:
        _copy_known_rows(model, graph, warm["checkpoint"])
        epochs, learning_rate = settings.preferences.warm_epochs, settings.preferences.warm_learning_rate
        return model, train_bpr(model, graph, epochs=epochs, learning_rate=learning_rate, **common)

    # Each (user, item)'s latest event decides when it happened; the latest pairs of each user are held out.
    pairs = events.groupby(["user_id", "item_id"], as_index=False)["event_ts"].max()
    fit_pairs, held = temporal_holdout(
        pairs, settings.preferences.validation_fraction, min_interactions=settings.preferences.validation_min_items,
        time_column="event_ts",
    )  # fmt: skip
    validation, fit_graph = None, graph
    if len(held):
        keep = events.set_index(["user_id", "item_id"]).index.isin(
            held.set_index(["user_id", "item_id"]).index
        )
        fit_graph = _graph(
            settings, events[~keep], items, image_features, graph.user_ids, graph.item_ids, "events"
        )
        validation = ranking_task(fit_graph, fit_pairs, held)
    training = train_bpr(
        model, fit_graph, epochs=settings.preferences.epochs, learning_rate=settings.preferences.learning_rate,
        validation=validation, patience=settings.preferences.patience, **common,
    )  # fmt: skip
    return model, training


def _quantize_view(
    settings: Settings, graph: InteractionGraph, view: str, user_embedding, warm: dict | None, last_tokens
) -> tuple[dict[str, list[str]], Any, dict[str, Any]]:
    """Tokens of the users `view` sees, its codebooks, and how well they quantize.

    Preferences are unit vectors: a token names a direction of taste, not how active a user is.
    """
    import torch
    import torch.nn.functional as F

    from pmg_tasks.preferences.quantize import (
        align_codes,
        assign_codes,
        fit_residual_codebooks,
        preference_tokens,
        reconstruction_error,
    )

    rows = graph.view_users(view)
    users = [graph.user_ids[row] for row in rows]
    preferences = F.normalize(user_embedding[torch.tensor(rows, dtype=torch.long)], dim=1)
    shape = (settings.preferences.token_levels, settings.preferences.token_codes, settings.preferences.dim)
    init = _previous_codebooks(warm, view, shape)
    codebooks = fit_residual_codebooks(
        preferences, settings.preferences.token_levels, settings.preferences.token_codes, seed=settings.seed, init=init
    )
    codes = assign_codes(preferences, codebooks)
    previous_codes = _previous_codes(last_tokens, view, users, settings.preferences.token_levels)
    if previous_codes is not None:
        known = previous_codes[:, 0] >= 0
        books, _ = align_codes(codebooks, codes[known], previous_codes[known])
        codebooks, codes = books, assign_codes(preferences, books)
    tokens = dict(zip(users, preference_tokens(codes, view), strict=True))
    stats = {
        "users": len(users),
        "reconstruction_error": reconstruction_error(preferences, codebooks),
        "codes_in_use": [int(torch.unique(codes[:, level]).numel()) for level in range(codes.shape[1])],
        "codebooks_warm_started": init is not None,
        "codes_aligned_to_previous": previous_codes is not None,
    }
    return tokens, codebooks, stats


def _previous_codes(last_tokens, view: str, users: list[str], levels: int):
    """Last night's codes of `view` for `users` as `[n, levels]` (-1 for users it had none for), or None."""
    import torch

    column = f"{view}_tokens"
    if last_tokens is None or column not in last_tokens.columns:
        return None
    by_user = dict(zip(last_tokens["user_id"], last_tokens[column], strict=True))
    codes = torch.full((len(users), levels), -1, dtype=torch.long)
    for row, user in enumerate(users):
        parts = [_token_parts([t])[0] for t in by_user.get(user, [])]
        if len(parts) == levels:
            codes[row] = torch.tensor([code for *_, code in parts])
    return codes if (codes[:, 0] >= 0).any() else None


def _token_parts(tokens: list[str]) -> list[tuple[str, str, int, int]]:
    """`(token, view, level, code)` of each `<pref_{view}_{level}_{code}>`."""
    parts = []
    for token in tokens:
        view, level, code = token.strip("<>").removeprefix("pref_").rsplit("_", 2)
        parts.append((token, view, int(level), int(code)))
    return parts


def _previous_tokens(store: ObjectStore, parent: str | None):
    key = run_key(parent, TOKENS_FILE) if parent else None
    return read_frame(store, key) if key and store.exists(key) else None


def _best(training: TrainingResult) -> str:
    return f"{max(training.validation):.4f}" if training.validation else "not measured"


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def warm_start_version(store: ObjectStore, ds: str) -> str | None:
    """The model version that `ds` trains from, or None for a cold start.

    Nightly that is `LATEST`. When `LATEST` is `ds` itself or later (a rerun or a backfill), it is the newest
    complete version before `ds`, so rerunning a date retraces the same steps instead of building on itself.
    """
    versions = warm_start_versions(store, ds)
    return versions[0] if versions else None


def warm_start_versions(store: ObjectStore, ds: str) -> list[str]:
    """The versions `ds` may start from, best first: `warm_start_version`, then every earlier complete
    version, newest first (where a damaged one sends the night)."""
    complete = {
        key.removeprefix(GNN_MODELS_PREFIX).split("/")[0]
        for key in store.list_keys(GNN_MODELS_PREFIX)
        if key.endswith("/" + CODEBOOKS_FILE)
    }
    earlier = sorted((version for version in complete if version < ds), reverse=True)
    latest = read_latest_version(store)
    if latest is not None and latest < ds:
        return [latest, *(version for version in earlier if version != latest)]
    return earlier


def _load_warm_start(store: ObjectStore, ds: str) -> tuple[str | None, dict | None, list[dict[str, str]]]:
    """The newest version `ds` may start from that reads back, its checkpoint and codebooks, and the damaged
    versions passed over on the way (each with the reason); (None, None, ...) means a cold start."""
    import pickle
    import zipfile

    passed_over = []
    for version in warm_start_versions(store, ds):
        try:
            return version, _load_version(store, version), passed_over
        except (RuntimeError, EOFError, OSError, KeyError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'unreadable'}"[:300]
            log.warning(
                "preference model version %s is damaged (%s): passing over it for an earlier version", version, reason
            )
            passed_over.append({"version": version, "reason": reason})
    if passed_over:
        log.warning("no earlier preference model version reads back: tonight trains from scratch")
    return None, None, passed_over


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
    user_index, item_index = graph.user_index(), graph.item_index()
    user_rows = torch.tensor([user_index[user] for user in checkpoint["user_ids"]], dtype=torch.long)
    item_rows = torch.tensor([item_index[item] for item in checkpoint["item_ids"]], dtype=torch.long)
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


def _tokens_table(users, tokens, segment_tokens, segments, view_tokens, hashes):
    import pyarrow as pa

    tokens_type = pa.list_(pa.string())
    columns = {
        "user_id": (pa.string(), users),
        "tokens": (tokens_type, [tokens[user] for user in users]),
        "segment_id": (pa.string(), [segments[user] for user in users]),
        "segment_tokens": (tokens_type, [segment_tokens[user] for user in users]),
    }
    for view, by_user in view_tokens.items():
        columns[f"{view}_tokens"] = (tokens_type, [by_user.get(user, []) for user in users])
    columns["interactions_hash"] = (pa.string(), [hashes[user] for user in users])
    return pa.table(
        {name: values for name, (_, values) in columns.items()},
        schema=pa.schema([(name, kind) for name, (kind, _) in columns.items()]),
    )
