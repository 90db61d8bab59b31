"""The generate + score stage, mapped over shards (PMG section 3.4).

For each generation request of a shard: draw k candidate images with recorded seeds, score each with CLIP
against the user's preference keywords (d_p) and the target item's keywords (d_t), keep the best v by
z = alpha * log(d_p) + (1 - alpha) * log(d_t), and write them as PNGs that carry their scores.

Every candidate is named before it is drawn (its seed comes from the request signature, its creative id from
the signature, the seed and the model versions), so a retried shard finds what it already wrote and only
draws the requests that are missing.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from pmg_tasks import layout
from pmg_tasks.generate.pipeline import (
    inference_device,
    load_diffusion_pipeline,
    render_images,
    require_model_dir,
)
from pmg_tasks.generate.scoring import CandidateScore, ClipScorer, rank_by_z
from pmg_tasks.models.versions import model_version
from pmg_tasks.store import image_bytes, open_store, read_frame, write_table

if TYPE_CHECKING:
    import pyarrow as pa
    from PIL.Image import Image

    from pmg_tasks.settings import Generation, Settings
    from pmg_tasks.store import ObjectStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationRequest:
    """One row of a shard table: what to draw for one prompt signature, and how to choose."""

    signature: str
    campaign_id: str
    prompt: str
    preference_text: str
    target_text: str
    alpha: float
    candidates: int
    variants: int

    def __post_init__(self):
        if not 1 <= self.variants <= self.candidates:
            raise ValueError(
                f"request {self.signature}: needs 1 <= variants <= candidates, "
                f"got variants={self.variants}, candidates={self.candidates}"
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"request {self.signature}: alpha must lie in [0, 1], got {self.alpha}")


REQUEST_COLUMNS = tuple(field.name for field in fields(GenerationRequest))


@dataclass(frozen=True)
class Candidate:
    """One of a request's k images, named before it is drawn."""

    request: GenerationRequest
    index: int
    seed: int
    creative_id: str


@dataclass(frozen=True)
class Creative:
    """A kept candidate: one row of the shard result table."""

    signature: str
    campaign_id: str
    creative_id: str
    image_key: str
    seed: int
    rank: int
    d_p: float
    d_t: float
    z: float
    candidates: int


def generate_shard(settings: Settings, ds: str, shard_index: int) -> dict:
    """Draw, score and keep the creatives of shard `shard_index` of run `ds`, then write its result table.

    Writes each kept image to `layout.creative_key` (PNG with signature, seed, rank, d_p, d_t and z in its
    text chunks) and one row per kept image to `layout.shard_result_key`. Requests whose kept images are
    already in the store are read back instead of drawn. Returns counts for XCom.
    """
    diffusion_dir = require_model_dir(settings.models.diffusion, "diffusion")
    clip_dir = require_model_dir(settings.models.clip, "clip")
    store = open_store(settings)
    requests = read_requests(store, layout.shard_key(ds, shard_index))
    versions = (model_version(str(diffusion_dir)), model_version(str(clip_dir)))
    candidates = {request.signature: name_candidates(request, *versions) for request in requests}

    kept = find_written_creatives(store, ds, requests, candidates)
    pending = [request for request in requests if request.signature not in kept]
    logger.info(
        "shard %d: %d requests, %d already written, %d to draw",
        shard_index,
        len(requests),
        len(kept),
        len(pending),
    )
    if pending:
        # Load the diffusion pipeline and CLIP once per shard, and only when something is left to draw.
        device, dtype = inference_device()
        pipeline = load_diffusion_pipeline(diffusion_dir, device, dtype)
        scorer = ClipScorer.load(clip_dir, device, dtype)
        queue = [candidate for request in pending for candidate in candidates[request.signature]]
        kept |= draw_and_keep(pipeline, scorer, store, ds, queue, settings.generation, shard_index)

    creatives = [creative for request in requests for creative in kept[request.signature]]
    result_key = write_table(store, layout.shard_result_key(ds, shard_index), result_table(creatives))
    return {
        "shard": shard_index,
        "requests": len(requests),
        "creatives": len(creatives),
        "generated": len(pending),
        "skipped": len(requests) - len(pending),
        "result_key": result_key,
    }


def read_requests(store: ObjectStore, key: str) -> list[GenerationRequest]:
    """The generation requests of the shard table at `key`, checked."""
    frame = read_frame(store, key)
    missing = [column for column in REQUEST_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(
            f"shard table {key} lacks columns {missing}; the plan stage writes {list(REQUEST_COLUMNS)}"
        )
    requests = [
        GenerationRequest(
            signature=str(row["signature"]),
            campaign_id=str(row["campaign_id"]),
            prompt=str(row["prompt"]),
            preference_text=str(row["preference_text"]),
            target_text=str(row["target_text"]),
            alpha=float(row["alpha"]),
            candidates=int(row["candidates"]),
            variants=int(row["variants"]),
        )
        for row in frame[list(REQUEST_COLUMNS)].to_dict("records")
    ]
    signatures = [request.signature for request in requests]
    if len(set(signatures)) != len(signatures):
        raise ValueError(f"shard table {key} repeats a signature; the plan stage writes each one once")
    return requests


def candidate_seed(signature: str, index: int) -> int:
    """The seed of candidate `index` of a request: fixed by the signature, so a rerun draws the same image."""
    digest = hashlib.sha256(f"{signature}\0{index}".encode()).digest()
    # 63 bits: a seed fits a signed 64-bit column as well as torch's generator.
    return int.from_bytes(digest[:8], "big") >> 1


def creative_id(signature: str, seed: int, diffusion_version: str, clip_version: str) -> str:
    """The stable name of a candidate image: a hash of everything that made it."""
    made_of = "\0".join([signature, str(seed), diffusion_version, clip_version])
    return hashlib.sha256(made_of.encode()).hexdigest()[:20]


def name_candidates(request: GenerationRequest, diffusion_version: str, clip_version: str) -> list[Candidate]:
    """The request's k candidates with their seeds and creative ids."""
    seeds = [candidate_seed(request.signature, index) for index in range(request.candidates)]
    return [
        Candidate(request, index, seed, creative_id(request.signature, seed, diffusion_version, clip_version))
        for index, seed in enumerate(seeds)
    ]


def find_written_creatives(
    store: ObjectStore, ds: str, requests: list[GenerationRequest], candidates: dict[str, list[Candidate]]
) -> dict[str, list[Creative]]:
    """The kept creatives of every request whose v images are already in the store, read back from the
    images' own text chunks, by signature. A request with fewer images is left out, to be drawn again."""
    stored: set[str] = set()
    # One listing per campaign, not one lookup per candidate: listings are cheap in both stores.
    for campaign_id in sorted({request.campaign_id for request in requests}):
        stored.update(store.list_keys(layout.campaign_creatives_prefix(ds, campaign_id)))
    written = {}
    for request in requests:
        found = [c for c in candidates[request.signature] if _image_key(ds, c) in stored]
        if len(found) >= request.variants:
            scores = [_read_scores(store, _image_key(ds, candidate)) for candidate in found]
            written[request.signature] = keep_best(ds, found, scores)
    return written


def draw_and_keep(
    pipeline,
    scorer: ClipScorer,
    store: ObjectStore,
    ds: str,
    queue: list[Candidate],
    generation: Generation,
    shard_index: int,
) -> dict[str, list[Creative]]:
    """Draw the queued candidates in batches, score them, and write each request's best v as soon as all its
    candidates are in, so images are held only for requests still open. Returns kept creatives by signature."""
    batch_size = generation.batch_size
    drawn: dict[str, list[tuple[Candidate, Image, CandidateScore]]] = {}
    kept: dict[str, list[Creative]] = {}
    for start in range(0, len(queue), batch_size):
        batch = queue[start : start + batch_size]
        images = render_images(
            pipeline, [c.request.prompt for c in batch], [c.seed for c in batch], generation
        )
        scores = scorer.score(
            images,
            [c.request.preference_text for c in batch],
            [c.request.target_text for c in batch],
            [c.request.alpha for c in batch],
        )
        for candidate, image, score in zip(batch, images, scores, strict=True):
            request = candidate.request
            drawn.setdefault(request.signature, []).append((candidate, image, score))
            if len(drawn[request.signature]) == request.candidates:
                kept[request.signature] = write_best(store, ds, drawn.pop(request.signature))
        logger.info("shard %d: %d/%d candidate images drawn", shard_index, start + len(batch), len(queue))
    return kept


def keep_best(ds: str, candidates: list[Candidate], scores: list[CandidateScore]) -> list[Creative]:
    """The request's best v candidates by z, ranked from 1."""
    best = rank_by_z(scores)[: candidates[0].request.variants]
    return [_creative(ds, candidates[i], scores[i], rank) for rank, i in enumerate(best, start=1)]


def write_best(
    store: ObjectStore, ds: str, drawn: list[tuple[Candidate, Image, CandidateScore]]
) -> list[Creative]:
    """Keep the best v of one request's drawn candidates and write each as a PNG carrying its scores."""
    candidates, images, scores = (list(column) for column in zip(*drawn, strict=True))
    kept = keep_best(ds, candidates, scores)
    image_of = {candidate.creative_id: image for candidate, image in zip(candidates, images, strict=True)}
    for creative in kept:
        image = image_of[creative.creative_id]
        image.info.update(_png_text(creative))
        store.put_bytes(creative.image_key, image_bytes(image))
    return kept


def result_table(creatives: list[Creative]) -> pa.Table:
    """The shard result table: one row per kept creative."""
    import pyarrow as pa

    schema = pa.schema(
        [
            ("signature", pa.string()),
            ("campaign_id", pa.string()),
            ("creative_id", pa.string()),
            ("image_key", pa.string()),
            ("seed", pa.int64()),
            ("rank", pa.int64()),
            ("d_p", pa.float64()),
            ("d_t", pa.float64()),
            ("z", pa.float64()),
            ("candidates", pa.int64()),
        ]
    )
    return pa.Table.from_pylist([asdict(creative) for creative in creatives], schema=schema)


def _creative(ds: str, candidate: Candidate, score: CandidateScore, rank: int) -> Creative:
    request = candidate.request
    return Creative(
        signature=request.signature,
        campaign_id=request.campaign_id,
        creative_id=candidate.creative_id,
        image_key=_image_key(ds, candidate),
        seed=candidate.seed,
        rank=rank,
        d_p=score.d_p,
        d_t=score.d_t,
        z=score.z,
        candidates=request.candidates,
    )


def _image_key(ds: str, candidate: Candidate) -> str:
    return layout.creative_key(ds, candidate.request.campaign_id, candidate.creative_id)


def _png_text(creative: Creative) -> dict[str, str]:
    # repr() of a float reads back to the same float, so a resumed shard reports the scores it wrote.
    return {
        "signature": creative.signature,
        "seed": str(creative.seed),
        "rank": str(creative.rank),
        "d_p": repr(creative.d_p),
        "d_t": repr(creative.d_t),
        "z": repr(creative.z),
    }


def _read_scores(store: ObjectStore, key: str) -> CandidateScore:
    from PIL import Image

    with Image.open(io.BytesIO(store.get_bytes(key))) as image:
        text = image.text
    return CandidateScore(d_p=float(text["d_p"]), d_t=float(text["d_t"]), z=float(text["z"]))
