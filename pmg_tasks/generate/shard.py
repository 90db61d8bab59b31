"""The generate + score + choose stage, mapped over shards: `PersonalizedCreatives` with store I/O, naming
and resume around it.

For each generation request of a shard: draw k candidates with recorded seeds, score them, give every user
of the request their own best `variants` by their own z, write each chosen image once (many users may share
it) as a PNG, and record one row per (user, rank).

Every candidate is named before it is drawn: its seed comes from the request signature, its creative id from
the signature, the seed and the model versions (diffusion, CLIP, token embeddings). The shard records the
requests it finished, a part every `generation.checkpoint_requests`, after their images are written; a
retried shard reads that record (not a listing of the campaign's images) and draws only the rest.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pmg_tasks import layout
from pmg_tasks.generate.creatives import (
    REQUEST_COLUMNS,
    Chooser,
    GenerationRequest,
    PersonalizedCreatives,
    RequestResult,
)
from pmg_tasks.generate.safety import safety_counts
from pmg_tasks.models.diffusion import require_model_dir
from pmg_tasks.models.versions import model_version
from pmg_tasks.store import image_bytes, open_store, read_frame, write_table

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from PIL.Image import Image

    from pmg_tasks.settings import Settings
    from pmg_tasks.store import ObjectStore

logger = logging.getLogger(__name__)

RESULT_COLUMNS = (
    ("signature", "string"), ("request_key", "string"), ("campaign_id", "string"), ("user_id", "string"),
    ("rank", "int64"), ("candidate", "int64"), ("creative_id", "string"), ("image_key", "string"),
    ("seed", "int64"), ("d_p", "float64"), ("d_t", "float64"), ("consistency", "float64"), ("z", "float64"),
    ("candidates", "int64"), ("diffusion_model", "string"), ("clip_model", "string"),
    ("token_embeddings", "string"), ("safety", "string"), ("flagged", "string"),
)  # fmt: skip


@dataclass(frozen=True)
class ModelVersions:
    """What made the pixels and the scores, as short stable names (they go into every creative id)."""

    diffusion: str
    clip: str
    tokens: str

    def names(self) -> tuple[str, str, str]:
        return self.diffusion, self.clip, self.tokens


def generate_shard(settings: Settings, ds: str, shard_index: int) -> dict:
    """Draw, score and choose the creatives of shard `shard_index` of run `ds`, then write its result table
    (`layout.shard_result_key`): one row per (request, user, rank), or one row of rank 0 per user of a
    request the safety checks blocked. Requests the shard's record already has are read back, not drawn.
    Returns counts for XCom."""
    from pmg_tasks.tokens.stage import read_version, version_id

    diffusion_dir = require_model_dir(settings.models.diffusion, "diffusion")
    clip_dir = require_model_dir(settings.models.clip, "clip")
    store = open_store(settings)
    requests = read_requests(store, layout.shard_key(ds, shard_index), _headlines(store, ds))
    audiences = read_audiences(store, layout.shard_audience_key(ds, shard_index), requests)
    token_index = read_version(store, ds)
    if token_index is None and any(_tokens_in(r.prompt) for r in requests):
        raise ValueError(
            f"shard {shard_index} of {ds} uses preference tokens, but models/tokens/{ds}/ is not complete: "
            "run the token_embeddings task for this date first"
        )
    versions = ModelVersions(
        model_version(str(diffusion_dir)), model_version(str(clip_dir)),
        version_id(token_index) if token_index else "no-tokens",
    )  # fmt: skip
    keys = {r.signature: request_key(r, audiences[r.signature], versions) for r in requests}

    done = with_stored_images(store, read_record(store, ds, shard_index, set(keys.values())), shard_index)
    pending = [r for r in requests if keys[r.signature] not in set(done["request_key"])]
    logger.info(
        "shard %d: %d requests for %d users, %d already recorded, %d to draw",
        shard_index, len(requests), len({u.user_id for a in audiences.values() for u in a}),
        len(requests) - len(pending), len(pending),
    )  # fmt: skip
    if pending:
        # Models load once per worker process, and only when something is left to draw.
        creatives = worker_models(settings, ds, store, versions)
        creatives.generation = settings.generation
        recorder = _Recorder(store, ds, shard_index, settings.generation.checkpoint_requests)
        seeds = {r.signature: candidate_seeds(r) for r in pending}
        try:
            for result in creatives(pending, seeds, audiences, _target_images(store, pending)):
                rows, writes = write_chosen(recorder.writer, ds, result, versions, keys[result.request.signature])
                recorder.add(rows, writes)
            recorder.flush()
        finally:
            recorder.close()
        done = read_record(store, ds, shard_index, set(keys.values()))

    result_frame = _in_request_order(done, requests)
    result_key = write_table(store, layout.shard_result_key(ds, shard_index), result_table(result_frame))
    # The result is the record now; parts would only be read again by a later attempt.
    store.delete_prefix(layout.shard_record_prefix(ds, shard_index))
    kept = result_frame[result_frame["rank"] > 0]
    transfers = store.transfer_stats()
    if transfers:
        logger.info("shard %d: object store %d requests, %d retried attempts %s", shard_index,
                    transfers["requests"], transfers["retries"], transfers["retries_by_operation"])  # fmt: skip
    return {
        "shard": shard_index,
        "requests": len(requests),
        "choices": len(kept),
        "creatives": int(kept["creative_id"].nunique()),
        "generated": len(pending),
        "skipped": len(requests) - len(pending),
        "safety": safety_counts(result_frame),
        "result_key": result_key,
    }


_WORKER: dict[tuple, PersonalizedCreatives] = {}


def worker_models(settings: Settings, ds: str, store: ObjectStore, versions: ModelVersions) -> PersonalizedCreatives:
    """The diffusion pipeline (with every token row of the run's version), the scorer and the safety
    checks, loaded once per worker process and kept while the model versions stay the same: a worker that
    runs several shards loads them once. New versions release the old models first."""
    from pmg_tasks.generate.creatives import PersonalizedCreatives
    from pmg_tasks.generate.safety import ImageSafety
    from pmg_tasks.tokens.stage import load_vectors

    generation = settings.generation
    key = (*versions.names(), settings.models.diffusion, settings.models.clip, generation.dtype,
           generation.compile, generation.target_reference, settings.safety.model_dump_json())  # fmt: skip
    if key not in _WORKER:
        release_worker_models()
        tokens = load_vectors(store, ds) if versions.tokens != "no-tokens" else {}
        _WORKER[key] = PersonalizedCreatives.from_models(
            settings.models.diffusion, settings.models.clip, generation, tokens,
            ImageSafety.from_settings(settings.safety),
        )  # fmt: skip
    return _WORKER[key]


def release_worker_models() -> None:
    """Drops the loaded models (and what they hold on the GPU)."""
    import gc

    _WORKER.clear()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is always there where models were loaded
        pass


def read_requests(store: ObjectStore, key: str, headlines: dict[str, str]) -> list[GenerationRequest]:
    """The generation requests of the shard table at `key`, checked, each with its headline."""
    frame = read_frame(store, key)
    # A plan from before campaigns set their own size and steps has neither column: the settings' apply.
    for column in ("image_size", "inference_steps"):
        if column not in frame.columns:
            frame[column] = 0
    wanted = [c for c in REQUEST_COLUMNS if c != "headline"]
    missing = [column for column in wanted if column not in frame.columns]
    if missing:
        raise ValueError(f"shard table {key} lacks columns {missing}; the plan stage writes {list(wanted)}")
    if not frame["signature"].is_unique:
        raise ValueError(f"shard table {key} repeats a signature; the plan stage writes each one once")
    absent = sorted(set(frame["signature"]) - set(headlines))
    if absent:
        raise ValueError(
            f"{len(absent)} requests of {key} have no headline (e.g. {absent[0]}): run the headlines task first"
        )
    return [
        GenerationRequest(
            signature=str(row["signature"]), campaign_id=str(row["campaign_id"]), prompt=str(row["prompt"]),
            negative_prompt=str(row["negative_prompt"]), target_text=str(row["target_text"]),
            headline=headlines[row["signature"]], alpha=float(row["alpha"]),
            consistency_weight=float(row["consistency_weight"]), candidates=int(row["candidates"]),
            variants=int(row["variants"]), target_image_key=str(row["target_image_key"] or ""),
            image_size=int(row["image_size"]), inference_steps=int(row["inference_steps"]),
        )  # fmt: skip
        for row in frame[wanted].to_dict("records")
    ]


def read_audiences(
    store: ObjectStore, key: str, requests: Sequence[GenerationRequest]
) -> dict[str, list[Chooser]]:
    """Signature -> the users choosing among its candidates, in user order; every request must have some."""
    frame = read_frame(store, key).sort_values(["signature", "user_id"], kind="stable")
    audiences: dict[str, list[Chooser]] = {r.signature: [] for r in requests}
    for signature, user_id, text in zip(frame["signature"], frame["user_id"], frame["preference_text"], strict=True):
        if signature in audiences:
            audiences[signature].append(Chooser(str(user_id), str(text)))
    empty = [signature for signature, users in audiences.items() if not users]
    if empty:
        raise ValueError(f"{key} has no users for {len(empty)} requests (e.g. {empty[0]}); rerun the plan stage")
    return audiences


def candidate_seed(signature: str, index: int) -> int:
    """The seed of candidate `index` of a request: fixed by the signature, so a rerun draws the same image."""
    digest = hashlib.sha256(f"{signature}\0{index}".encode()).digest()
    # 63 bits: a seed fits a signed 64-bit column as well as torch's generator.
    return int.from_bytes(digest[:8], "big") >> 1


def candidate_seeds(request: GenerationRequest) -> list[int]:
    return [candidate_seed(request.signature, index) for index in range(request.candidates)]


def creative_id(signature: str, seed: int, versions: ModelVersions) -> str:
    """The stable name of a candidate image: a hash of everything that made it."""
    made_of = "\0".join([signature, str(seed), *versions.names()])
    return hashlib.sha256(made_of.encode()).hexdigest()[:20]


def request_key(request: GenerationRequest, users: Sequence[Chooser], versions: ModelVersions) -> str:
    """Everything that decides a request's recorded rows: its recipe, its headline, its users and their
    texts, and the models. A record under another key is stale and is drawn again."""
    made_of = json.dumps(
        [request.signature, request.headline, request.alpha, request.variants, request.consistency_weight,
         request.target_image_key, [(u.user_id, u.preference_text) for u in users], versions.names()],
    )  # fmt: skip
    return hashlib.sha256(made_of.encode()).hexdigest()[:24]


def write_chosen(
    writer: ImageWriter, ds: str, result: RequestResult, versions: ModelVersions, key: str
) -> tuple[list[dict], list[Future]]:
    """Hands every candidate some user chose to the writer, once, as a PNG carrying its seed and scores, and
    returns the request's rows (one per user and rank; for a blocked request one row of rank 0 per user)
    with the pending writes."""
    request = result.request
    seeds = candidate_seeds(request)
    names = [creative_id(request.signature, seed, versions) for seed in seeds]
    image_keys = [layout.creative_key(ds, request.campaign_id, name) for name in names]
    writes = []
    for position in result.chosen_positions():
        image = result.images[position]
        image.info.update({
            "signature": request.signature, "seed": str(seeds[position]), "candidate": str(position),
            "d_t": repr(float(result.d_t[position])), "consistency": repr(float(result.consistency[position])),
        })  # fmt: skip
        writes.append(writer.put(image_keys[position], image))
    flagged = json.dumps(dict(sorted(Counter(v.reason for v in result.verdicts.values() if not v.safe).items())))
    common = {"signature": request.signature, "request_key": key, "campaign_id": request.campaign_id,
              "candidates": request.candidates, "diffusion_model": versions.diffusion, "clip_model": versions.clip,
              "token_embeddings": versions.tokens, "flagged": flagged}  # fmt: skip
    rows = []
    for u, user_id in enumerate(result.users):
        if result.choice is None:
            nothing = float("nan")
            rows.append({**common, "user_id": user_id, "rank": 0, "candidate": -1, "creative_id": "",
                         "image_key": "", "seed": -1, "d_p": nothing, "d_t": nothing, "consistency": nothing,
                         "z": nothing, "safety": "blocked"})  # fmt: skip
            continue
        for rank, position in enumerate(result.choice.candidates[u].tolist(), start=1):
            rows.append({
                **common, "user_id": user_id, "rank": rank, "candidate": position, "creative_id": names[position],
                "image_key": image_keys[position], "seed": seeds[position],
                "d_p": float(result.choice.d_p[u, rank - 1]), "d_t": float(result.d_t[position]),
                "consistency": float(result.consistency[position]), "z": float(result.choice.z[u, rank - 1]),
                "safety": result.safety[u],
            })  # fmt: skip
    return rows, writes


def read_record(store: ObjectStore, ds: str, shard_index: int, keys: set[str]) -> pd.DataFrame:
    """The rows this shard recorded for the request keys in `keys`: from its result table where an earlier
    attempt finished, and from the parts a failed attempt left."""
    import pandas as pd

    sources = [layout.shard_result_key(ds, shard_index)] + store.list_keys(layout.shard_record_prefix(ds, shard_index))
    frames = [read_frame(store, key) for key in sources if store.exists(key)]
    frames = [frame for frame in frames if "request_key" in frame.columns]
    if not frames:
        return result_table([]).to_pandas()
    rows = pd.concat(frames, ignore_index=True)
    rows = rows[rows["request_key"].isin(keys)]
    return rows.drop_duplicates(["request_key", "user_id", "rank"], keep="last").reset_index(drop=True)


def with_stored_images(store: ObjectStore, done: pd.DataFrame, shard_index: int) -> pd.DataFrame:
    """`done` without the requests one of whose images is no longer in the store (removed since it was
    recorded, e.g. by a republish after its campaign was dropped): those are drawn again, so no manifest row
    names a missing image. One listing per campaign folder the record names."""
    named = done["image_key"].ne("")
    if not named.any():
        return done
    folders = sorted({key.rsplit("/", 1)[0] + "/" for key in done.loc[named, "image_key"]})
    stored = {key for folder in folders for key in store.list_keys(folder)}
    lost = set(done.loc[named & ~done["image_key"].isin(stored), "request_key"])
    if lost:
        logger.warning("shard %d: %d recorded requests name images no longer in the store: drawing them again",
                       shard_index, len(lost))  # fmt: skip
    return done[~done["request_key"].isin(lost)].reset_index(drop=True)


def result_table(rows: Iterable[dict] | pd.DataFrame) -> pa.Table:
    """The shard result table (and each record part): one row per (request, user, rank)."""
    import pandas as pd
    import pyarrow as pa

    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in RESULT_COLUMNS])
    if isinstance(rows, pd.DataFrame):
        return pa.Table.from_pandas(rows[[name for name, _ in RESULT_COLUMNS]], schema=schema, preserve_index=False)
    return pa.Table.from_pylist(list(rows), schema=schema)


class ImageWriter:
    """PNG encoding and uploads on a bounded pool of background threads (as many as the store uploads at
    once: 16 for S3 by default), so the GPU draws the next batch meanwhile. At most `max_pending` images
    wait, which bounds the memory they hold."""

    def __init__(self, store: ObjectStore, threads: int | None = None, max_pending: int = 64):
        from concurrent.futures import ThreadPoolExecutor

        self.store = store
        threads = threads or getattr(store, "concurrency", 4)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="pmg-png")
        self.slots = threading.BoundedSemaphore(max(max_pending, 2 * threads))

    def put(self, key: str, image: Image) -> Future:
        self.slots.acquire()
        future = self.pool.submit(self.store.put_bytes, key, image_bytes(image))
        future.add_done_callback(lambda _: self.slots.release())
        return future

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class _Recorder:
    """Records finished requests' rows, `every` requests a part: a part is written only once the images of
    its requests are, so whatever a part names exists."""

    def __init__(self, store: ObjectStore, ds: str, shard_index: int, every: int):
        self.store, self.ds, self.shard_index, self.every = store, ds, shard_index, every
        self.writer = ImageWriter(store)
        self.part = len(store.list_keys(layout.shard_record_prefix(ds, shard_index)))
        self.rows: list[dict] = []
        self.writes: list[Future] = []
        self.requests = 0

    def add(self, rows: list[dict], writes: list[Future]) -> None:
        self.rows.extend(rows)
        self.writes.extend(writes)
        self.requests += 1
        if self.requests >= self.every:
            self.flush()

    def flush(self) -> None:
        for write in self.writes:
            write.result()  # an upload that failed fails the shard here, before anything names its image
        if self.rows:
            key = layout.shard_record_part_key(self.ds, self.shard_index, self.part)
            write_table(self.store, key, result_table(self.rows))
            self.part += 1
        self.rows, self.writes, self.requests = [], [], 0

    def close(self) -> None:
        self.writer.close()


def _in_request_order(rows: pd.DataFrame, requests: Sequence[GenerationRequest]) -> pd.DataFrame:
    order = {r.signature: position for position, r in enumerate(requests)}
    return (
        rows.assign(_order=rows["signature"].map(order))
        .sort_values(["_order", "user_id", "rank"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def _headlines(store: ObjectStore, ds: str) -> dict[str, str]:
    key = layout.run_key(ds, "headlines.parquet")
    if not store.exists(key):
        return {}
    frame = read_frame(store, key)
    return dict(zip(frame["signature"], frame["headline"], strict=True))


def _target_images(store: ObjectStore, requests: Sequence[GenerationRequest]) -> dict[str, Image]:
    from PIL import Image

    images = {}
    for key in sorted({r.target_image_key for r in requests if r.target_image_key}):
        with Image.open(io.BytesIO(store.get_bytes(key))) as picture:
            images[key] = picture.convert("RGB")
    return images


def _tokens_in(prompt: str) -> list[str]:
    import re

    return re.findall(r"<pref_[a-z]+_\d+_\d+>", prompt)
