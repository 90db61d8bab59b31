"""Stage 5b, token embeddings: every preference token in use becomes a learned word of the diffusion text
encoder (textual inversion), versioned beside the GNN's codebooks. Runs on a GPU worker.

Reads tonight's `preference_tokens.parquet` and `token_descriptors.parquet`, the valid events and the item
catalog (for the images of the items each token's users engaged with), and writes

    models/tokens/<ds>/<token>.safetensors   one per token in use, diffusers' textual-inversion format
    models/tokens/<ds>/tokens.json           what each token started from and trained on; written last
    models/tokens/LATEST                     the version in force, only ever moved forward
    runs/ds=<ds>/stats/token_embeddings.json

A token starts from last night's row where the base diffusion model is the same (a warm start, like the
codebooks), else from its descriptor's words. Tokens whose users engaged with no item that has an image
keep that starting row, and the run says how many. A rerun of a date whose version is complete trains
nothing and returns the same version.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from pmg_tasks import layout
from pmg_tasks.store import ObjectStore, open_store, read_frame, read_json, write_json

if TYPE_CHECKING:
    from pmg_tasks.settings import Settings

log = logging.getLogger(__name__)


def train_token_embeddings(settings: Settings, ds: str) -> dict[str, Any]:
    """Writes the token-embedding version `ds` (see the module docstring) and returns its summary."""
    from pmg_tasks.models.diffusion import load_diffusion_pipeline, require_model_dir, training_device
    from pmg_tasks.models.versions import model_version
    from pmg_tasks.tokens.embeddings import (
        add_tokens,
        descriptor_vector,
        rows,
        set_rows,
        train_token_rows,
    )

    store = open_store(settings)
    diffusion_dir = require_model_dir(settings.models.diffusion, "diffusion")
    base_model = model_version(str(diffusion_dir))
    tokens_in_use = _tokens_in_use(store, ds)
    existing = read_version(store, ds)
    if _reusable(store, existing, base_model, tokens_in_use):
        log.info("token embeddings %s are complete for %d tokens: nothing to train", ds, len(tokens_in_use))
        _publish_latest(store, ds)
        return _write_summary(store, ds, existing, trained_now=False)

    started = time.perf_counter()
    parent, warm_vectors = _warm_start(store, ds, base_model, tokens_in_use)
    images = _training_images(store, ds, tokens_in_use, settings.token_embeddings.images_per_token)

    device, dtype = training_device()
    pipeline = load_diffusion_pipeline(diffusion_dir, device, dtype)
    token_ids = add_tokens(pipeline.tokenizer, pipeline.text_encoder, tokens_in_use)
    descriptors = _descriptor_words(store, ds, settings)
    set_rows(pipeline.text_encoder, token_ids, {
        token: warm_vectors[token] if token in warm_vectors
        else descriptor_vector(pipeline.tokenizer, pipeline.text_encoder, descriptors.get(token, []))
        for token in tokens_in_use
    })  # fmt: skip
    options = settings.token_embeddings
    result = train_token_rows(
        pipeline, token_ids, images, steps_per_token=options.steps_per_token, batch_size=options.batch_size,
        learning_rate=options.learning_rate, resolution=settings.generation.image_size, seed=settings.seed,
    )  # fmt: skip
    index = {
        "version": ds, "base_model": base_model, "warm_start_from": parent,
        "tokens": {
            token: {"file": _token_key(ds, token), "start": "warm" if token in warm_vectors else "descriptor",
                    "images": len(images.get(token, [])), "trained": bool(images.get(token)) and result.steps > 0}
            for token in tokens_in_use
        },
        "steps": result.steps, "examples": result.examples, "first_loss": result.first_loss,
        "final_loss": result.final_loss,
    }  # fmt: skip
    _save_version(store, ds, rows(pipeline.text_encoder, token_ids), index)
    _publish_latest(store, ds)
    untrained = [t for t, entry in index["tokens"].items() if not entry["trained"]]
    log.info("trained %d token rows in %.1f s", len(tokens_in_use) - len(untrained), time.perf_counter() - started)
    if untrained:
        log.warning(
            "%d of %d tokens have no item image to train on and keep their starting row (descriptor words, "
            "or last night's row): %s", len(untrained), len(tokens_in_use), untrained[:8],
        )  # fmt: skip
    return _write_summary(store, ds, read_version(store, ds), trained_now=True)


def read_version(store: ObjectStore, version: str | None) -> dict | None:
    """The index (`tokens.json`) of a complete token-embedding version, or None."""
    if not version:
        return None
    key = layout.token_model_prefix(version) + layout.TOKEN_INDEX_FILE
    return read_json(store, key) if store.exists(key) else None


def load_vectors(store: ObjectStore, version: str, tokens: list[str] | None = None) -> dict[str, Any]:
    """Token -> its row (a float32 tensor) in version `version`, for `tokens` (default: all of them).

    Raises ValueError naming the file and the fix when a file is missing or damaged."""
    from pmg_tasks.tokens.embeddings import from_safetensors

    index = read_version(store, version)
    if index is None:
        raise ValueError(
            f"token embeddings {version} are not complete ({layout.token_model_prefix(version)}"
            f"{layout.TOKEN_INDEX_FILE} is missing): run the token_embeddings task for {version} first"
        )
    wanted = list(index["tokens"]) if tokens is None else tokens
    vectors = {}
    for token in wanted:
        if token not in index["tokens"]:
            raise ValueError(
                f"token {token} is not in token embeddings {version}: rerun token_embeddings for {version}"
            )
        key = index["tokens"][token]["file"]
        try:
            name, vector = from_safetensors(store.get_bytes(key))
        except (KeyError, ValueError) as error:
            raise ValueError(f"{key}: {error}; rerun token_embeddings for {version}") from error
        if name != token:
            raise ValueError(f"{key} holds {name}, not {token}; rerun token_embeddings for {version}")
        vectors[token] = vector
    return vectors


def version_id(index: dict) -> str:
    """A short name for a version's exact content, for creative ids: the same rows give the same name."""
    return f"tokens-{index['version']}-{index['digest'][:12]}"


def warm_start_versions(store: ObjectStore, ds: str) -> list[str]:
    """The versions `ds` may start from, best first: LATEST when it is older than `ds`, then (and for a
    rerun or a backfill, only) the complete versions before `ds`, newest first, so rerunning a date retraces
    the same steps."""
    complete = sorted(
        {
            key.removeprefix(layout.TOKEN_MODELS_PREFIX).split("/")[0]
            for key in store.list_keys(layout.TOKEN_MODELS_PREFIX)
            if key.endswith("/" + layout.TOKEN_INDEX_FILE)
        },
        reverse=True,
    )
    earlier = [version for version in complete if version < ds]
    latest = _read_latest(store)
    return [latest, *[v for v in earlier if v != latest]] if latest and latest < ds else earlier


def _warm_start(store: ObjectStore, ds: str, base_model: str, tokens: list[str]) -> tuple[str | None, dict]:
    """The newest earlier version on the same base model whose rows read back, and its rows of `tokens`; a
    damaged version is passed over, and the run says so."""
    for version in warm_start_versions(store, ds):
        index = read_version(store, version)
        if index is None or index["base_model"] != base_model:
            continue
        try:
            return version, load_vectors(store, version, [t for t in tokens if t in index["tokens"]])
        except ValueError as error:
            log.warning("token embeddings %s are damaged (%s): starting from an earlier version", version, error)
    return None, {}


def _reusable(store: ObjectStore, index: dict | None, base_model: str, tokens: list[str]) -> bool:
    """Whether a version already written for this date serves tonight: complete, on this base model, holding
    every token in use, and readable (a damaged file means training again)."""
    if index is None or index["base_model"] != base_model or not set(tokens) <= set(index["tokens"]):
        return False
    try:
        load_vectors(store, index["version"], tokens)
    except ValueError as error:
        log.warning("token embeddings %s are damaged (%s): training them again", index["version"], error)
        return False
    return True


def _tokens_in_use(store: ObjectStore, ds: str) -> list[str]:
    frame = read_frame(store, layout.run_key(ds, "preference_tokens.parquet"))
    return sorted({token for tokens in frame["tokens"] for token in tokens})


def _descriptor_words(store: ObjectStore, ds: str, settings: Settings) -> dict[str, list[str]]:
    """Token -> the words its row starts from: its most typical keywords, then categories, minus every
    word an active campaign denies (a row is shared by every campaign)."""
    from pmg_tasks.campaigns import campaigns_for_run
    from pmg_tasks.text_safety import Denylist

    key = layout.run_key(ds, "token_descriptors.parquet")
    if not store.exists(key):
        return {}
    denied = Denylist(
        word
        for campaign in campaigns_for_run(settings, ds, store).active(ds)
        for word in campaign.denylist
    )
    frame = read_frame(store, key)
    return {
        row.token: denied.keep([*row.top_keywords, *row.top_categories])
        for row in frame.itertuples(index=False)
    }


def _training_images(store: ObjectStore, ds: str, tokens: list[str], per_token: int) -> dict[str, list]:
    """Token -> up to `per_token` images of the items its users engaged with most (summed event weights over
    the token's users), for the items the store has an image of."""
    from PIL import Image

    from pmg_tasks.item_images import item_image_keys
    from pmg_tasks.preferences.graph import EVENT_WEIGHTS

    events = read_frame(store, layout.run_key(ds, "events_valid.parquet"))
    items = read_frame(store, layout.run_key(ds, "items.parquet"))
    image_keys = item_image_keys(items, store, events["item_id"].unique())
    if not image_keys:
        log.warning("no item of tonight's events has an image in the store: tokens keep their starting rows")
        return {}
    users = read_frame(store, layout.run_key(ds, "preference_tokens.parquet"))[["user_id", "tokens"]]
    engagement = (
        events.assign(weight=events["event_type"].map(EVENT_WEIGHTS).fillna(0.0))
        .loc[lambda frame: frame["item_id"].isin(image_keys)]
        .merge(users.explode("tokens").rename(columns={"tokens": "token"}), on="user_id")
        .groupby(["token", "item_id"], as_index=False)["weight"].sum()
        .sort_values(["token", "weight", "item_id"], ascending=[True, False, True])
        .groupby("token").head(per_token)
    )  # fmt: skip
    decoded: dict[str, Any] = {}
    images: dict[str, list] = {}
    for token, item_id in zip(engagement["token"], engagement["item_id"], strict=True):
        if token not in tokens:
            continue
        if item_id not in decoded:
            try:
                with Image.open(io.BytesIO(store.get_bytes(image_keys[item_id]))) as picture:
                    decoded[item_id] = picture.convert("RGB")
            except OSError as error:  # PIL's UnidentifiedImageError is an OSError
                log.warning("image of item %s is unreadable (%s); no token trains on it", item_id, error)
                decoded[item_id] = None
        if decoded[item_id] is not None:
            images.setdefault(token, []).append(decoded[item_id])
    return images


def _token_key(version: str, token: str) -> str:
    from pmg_tasks.tokens.embeddings import token_file_name

    return layout.token_model_prefix(version) + token_file_name(token)


def _save_version(store: ObjectStore, version: str, vectors: dict, index: dict) -> None:
    from pmg_tasks.tokens.embeddings import to_safetensors

    digest = hashlib.sha256()
    for token in sorted(vectors):
        data = to_safetensors(token, vectors[token])
        digest.update(data)
        store.put_bytes(_token_key(version, token), data)
    index["digest"] = digest.hexdigest()
    # Last: the index is what marks the version complete.
    store.put_bytes(
        layout.token_model_prefix(version) + layout.TOKEN_INDEX_FILE,
        json.dumps(index, indent=2, sort_keys=True).encode(),
    )


def _publish_latest(store: ObjectStore, version: str) -> None:
    latest = _read_latest(store)
    # A backfill of an older date must not pull generation back to older rows.
    if not latest or version >= latest:
        store.put_bytes(layout.TOKEN_LATEST_KEY, version.encode())


def _read_latest(store: ObjectStore) -> str:
    if not store.exists(layout.TOKEN_LATEST_KEY):
        return ""
    return store.get_bytes(layout.TOKEN_LATEST_KEY).decode().strip()


def _write_summary(store: ObjectStore, ds: str, index: dict, trained_now: bool) -> dict[str, Any]:
    entries = index["tokens"].values()
    summary = {
        "version": index["version"],
        "version_id": version_id(index),
        "tokens": len(index["tokens"]),
        "trained_tokens": sum(entry["trained"] for entry in entries),
        "descriptor_only_tokens": sum(not entry["trained"] and entry["start"] == "descriptor" for entry in entries),
        "warm_started_tokens": sum(entry["start"] == "warm" for entry in entries),
        "steps": index["steps"],
        "first_loss": index["first_loss"],
        "final_loss": index["final_loss"],
        "warm_start_from": index["warm_start_from"],
        "trained_now": trained_now,
    }
    write_json(store, layout.run_key(ds, "stats/token_embeddings.json"), summary)
    return summary
