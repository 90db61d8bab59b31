"""PMG for a batch of generation requests, read top to bottom like the method (Shen et al., section 3.4):

    encode the prompts (the preference tokens' learned rows reach the text encoder here)
      -> draw k candidates per request (seeded latents -> denoise -> decode)
      -> embed every candidate once and score it against the target item (d_t) and its headline (c)
      -> give every user of the request their own best candidates by their own z (choice.py)

It needs only a folder of models: in a notebook,

    creatives = PersonalizedCreatives.from_models("models/sd", "models/clip", settings.generation)
    for result in creatives(requests, seeds, audiences):
        result.chosen_images()

The Airflow shard (shard.py) wraps it with store I/O, naming and resume.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pmg_tasks.generate.choice import Choice, choose_per_user, preference_similarities, similarity
from pmg_tasks.generate.safety import ImageSafety, Verdict

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from pmg_tasks.generate.scoring import Scorer
    from pmg_tasks.settings import Generation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationRequest:
    """One image to generate k ways, and how its users choose among the k."""

    signature: str
    campaign_id: str
    prompt: str
    negative_prompt: str
    target_text: str
    headline: str
    alpha: float
    consistency_weight: float
    candidates: int
    variants: int
    # The target item's catalog image in the store, where d_t compares with it; "" for none.
    target_image_key: str = ""
    # The campaign's own image size and steps; 0: the settings' (Generation.image_size, inference_steps).
    image_size: int = 0
    inference_steps: int = 0

    def __post_init__(self):
        if not 1 <= self.variants <= self.candidates:
            raise ValueError(
                f"request {self.signature}: needs 1 <= variants <= candidates, "
                f"got variants={self.variants}, candidates={self.candidates}"
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"request {self.signature}: alpha must lie in [0, 1], got {self.alpha}")


REQUEST_COLUMNS = tuple(f.name for f in fields(GenerationRequest))


@dataclass(frozen=True)
class Chooser:
    """A user who chooses among a request's candidates, by their own preference keywords."""

    user_id: str
    preference_text: str


@dataclass
class RequestResult:
    """A request's k candidates with their scores, and every user's choice among them.

    `safety[u]` says whether user u got their best candidates (`passed`), or a flagged one gave its place to
    the next best (`replaced`); a request with fewer safe candidates than it keeps per user is `blocked`
    and chooses nothing. `verdicts` holds the safety verdict of every candidate that was checked."""

    request: GenerationRequest
    images: list[Image]
    d_t: np.ndarray
    consistency: np.ndarray
    users: list[str]
    choice: Choice | None = field(repr=False)
    safety: list[str] = field(default_factory=list)
    verdicts: dict[int, Verdict] = field(default_factory=dict)

    @property
    def blocked(self) -> bool:
        return self.choice is None

    def chosen_positions(self) -> list[int]:
        """The candidates at least one user chose, in candidate order: the images worth keeping."""
        if self.choice is None:
            return []
        return sorted({int(position) for position in self.choice.candidates.ravel()})


@dataclass
class _Drawn:
    """What a request has so far: its drawn candidates, their image embeddings and pipeline verdicts."""

    images: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    flags: list = field(default_factory=list)

    def add(self, image, row, flag) -> None:
        self.images.append(image)
        self.rows.append(row)
        self.flags.append(flag)


class PersonalizedCreatives:
    """A diffusion pipeline and a CLIP scorer, loaded once, drawing and choosing for batches of requests."""

    def __init__(
        self, pipeline, scorer: Scorer, generation: Generation, target_reference: str = "keywords",
        safety: ImageSafety | None = None,
    ):  # fmt: skip
        self.pipeline = pipeline
        self.scorer = scorer
        self.generation = generation
        self.target_reference = target_reference
        self.safety = safety or ImageSafety()

    @classmethod
    def from_models(
        cls,
        diffusion_dir: str | Path,
        clip_dir: str | Path,
        generation: Generation,
        token_embeddings: Mapping[str, torch.Tensor] | None = None,
        safety: ImageSafety | None = None,
    ) -> PersonalizedCreatives:
        """Both models from local folders on the best device here, with the preference tokens' rows."""
        from pmg_tasks.generate.scoring import load_scorer
        from pmg_tasks.models.diffusion import (
            apply_token_embeddings,
            inference_device,
            load_diffusion_pipeline,
        )

        device, dtype = inference_device(generation.dtype, Path(diffusion_dir))
        pipeline = load_diffusion_pipeline(Path(diffusion_dir), device, dtype, compile_unet=generation.compile)
        apply_token_embeddings(pipeline, token_embeddings or {})
        scorer = load_scorer(Path(clip_dir), device, dtype)
        return cls(pipeline, scorer, generation, generation.target_reference, safety)

    def __call__(
        self,
        requests: Sequence[GenerationRequest],
        seeds: Mapping[str, Sequence[int]],
        audiences: Mapping[str, Sequence[Chooser]],
        target_images: Mapping[str, Image] | None = None,
    ) -> Iterator[RequestResult]:
        """Draws every request's candidates (`seeds[signature]`, one seed each) in batches of up to
        `generation.batch_size` images, embeds each batch once, and yields each request's result as soon as
        its last candidate is in and its users have chosen, so images are held only for requests still open.

        The choice and its safety checks run on a thread of their own while the GPU draws the next batch
        (both release the GIL). Out of GPU memory, the batch is halved and drawn again, down to one image;
        results already yielded are never touched."""
        import torch

        queue = [(request, seed) for request in requests for seed in seeds[request.signature]]
        embedded_prompts: dict[tuple[str, str], tuple] = {}
        preference_rows: dict[str, np.ndarray] = {}
        drawn: dict[str, _Drawn] = {}
        choosing: deque[Future[RequestResult]] = deque()
        batch_size, start = self.generation.batch_size, 0
        with ThreadPoolExecutor(1, thread_name_prefix="pmg-choose") as chooser:
            while start < len(queue):
                batch = queue[start : start + batch_size]
                # One forward pass draws one size with one number of steps: a batch ends where they change.
                pixels = self.pixels(batch[0][0])
                batch = list(itertools.takewhile(lambda pair, wanted=pixels: self.pixels(pair[0]) == wanted, batch))
                try:
                    images, flags = self.render([(r.prompt, r.negative_prompt) for r, _ in batch],
                                                [s for _, s in batch], embedded_prompts, *pixels)  # fmt: skip
                except torch.OutOfMemoryError as error:
                    batch_size = smaller_batch(error, batch_size, pixels[0])
                    continue
                rows = self.scorer.image_embeddings(images)
                for (request, _), image, row, flag in zip(batch, images, rows, flags, strict=True):
                    state = drawn.setdefault(request.signature, _Drawn())
                    state.add(image, row, flag)
                    if len(state.images) == len(seeds[request.signature]):
                        del drawn[request.signature]
                        choosing.append(chooser.submit(
                            self.choose, request, state.images, audiences[request.signature],
                            (target_images or {}).get(request.target_image_key), preference_rows,
                            np.stack(state.rows), state.flags,
                        ))  # fmt: skip
                start += len(batch)
                log.info("%d/%d candidate images drawn (batch of %d)", start, len(queue), len(batch))
                # Hand back what is chosen; wait only when choosing falls a batch's worth behind.
                while choosing and (choosing[0].done() or len(choosing) > batch_size):
                    yield choosing.popleft().result()
            while choosing:
                yield choosing.popleft().result()

    def encode_prompts(self, prompts: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text-encoder states of each (prompt, negative prompt): the preference tokens in a prompt are looked
        up as their learned rows here. Returns (prompt states, negative states or None without guidance)."""
        guided = self.generation.guidance_scale > 1.0
        positive, negative = self.pipeline.encode_prompt(
            [p for p, _ in prompts], self.pipeline.device, 1, guided,
            negative_prompt=[n for _, n in prompts] if guided else None,
        )  # fmt: skip
        return positive, negative

    def draw(
        self, prompts: Sequence[tuple[str, str]], seeds: Sequence[int], cache: dict | None = None
    ) -> list[Image]:
        """One image per (prompt, negative prompt) and seed, in one batch (see `render`)."""
        return self.render(prompts, seeds, cache)[0]

    def pixels(self, request: GenerationRequest) -> tuple[int, int]:
        """The (image size, inference steps) a request is drawn with: its campaign's, else the settings'."""
        return (request.image_size or self.generation.image_size,
                request.inference_steps or self.generation.inference_steps)  # fmt: skip

    def render(
        self, prompts: Sequence[tuple[str, str]], seeds: Sequence[int], cache: dict | None = None,
        size: int = 0, steps: int = 0,
    ) -> tuple[list[Image], list[bool]]:
        """One image per (prompt, negative prompt) and seed, in one batch, and whether the pipeline's own
        safety checker flagged each (never, for a model without one). Each distinct prompt is encoded once
        (in `cache`, across batches); each image has its own generator on the CPU, so a seed gives the same
        starting noise on any device."""
        import torch

        cache = {} if cache is None else cache
        missing = list(dict.fromkeys(p for p in prompts if p not in cache))
        if missing:
            positive, negative = self.encode_prompts(missing)
            for row, pair in enumerate(missing):
                cache[pair] = (positive[row], None if negative is None else negative[row])
        prompt_embeds = torch.stack([cache[p][0] for p in prompts])
        negative_embeds = None if cache[prompts[0]][1] is None else torch.stack([cache[p][1] for p in prompts])
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
        size = size or self.generation.image_size
        with torch.inference_mode():
            output = self.pipeline(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                generator=generators,
                num_inference_steps=steps or self.generation.inference_steps,
                guidance_scale=self.generation.guidance_scale,
                height=size,
                width=size,
            )
        flags = getattr(output, "nsfw_content_detected", None) or [False] * len(output.images)
        return output.images, [bool(flag) for flag in flags]

    def choose(
        self,
        request: GenerationRequest,
        images: list[Image],
        choosers: Sequence[Chooser],
        target_image: Image | None = None,
        preference_rows: dict[str, np.ndarray] | None = None,
        candidate_rows: np.ndarray | None = None,
        pipeline_flags: Sequence[bool] | None = None,
    ) -> RequestResult:
        """Scores the request's candidates once (d_t, c), gives every chooser their own best by z, and checks
        the safety of every candidate someone would get: a flagged one is excluded and its users get their next
        best, until all kept candidates have passed (or too few are left, and the request is blocked)."""
        if not choosers:
            raise ValueError(
                f"request {request.signature} has no user to choose for: the plan stage writes each request "
                "with its audience"
            )
        if candidate_rows is None:
            candidate_rows = self.scorer.image_embeddings(images)
        flags = list(pipeline_flags) if pipeline_flags is not None else [False] * len(images)
        d_t = self.target_similarities(request, candidate_rows, target_image)
        [headline_row] = self.scorer.text_embeddings([request.headline or request.target_text])
        consistency = similarity(candidate_rows @ headline_row)
        users = [c.user_id for c in choosers]
        d_p = preference_similarities(self._preference_rows(choosers, preference_rows), candidate_rows)

        def pick(allowed: np.ndarray) -> Choice:
            return choose_per_user(
                d_p, d_t, request.alpha, request.variants, consistency, request.consistency_weight, allowed
            )

        allowed = np.ones(len(images), dtype=bool)
        unguarded = choice = pick(allowed)
        verdicts: dict[int, Verdict] = {}
        while True:
            unchecked = sorted({int(p) for p in choice.candidates.ravel()} - set(verdicts))
            for position in unchecked:
                verdicts[position] = self.safety.check(images[position], flags[position])
                allowed[position] &= verdicts[position].safe
            if all(verdicts[p].safe for p in unchecked):
                break
            if allowed.sum() < request.variants:
                reasons = sorted({v.reason for v in verdicts.values() if not v.safe})
                log.warning("request %s blocked: %d of %d candidates flagged (%s)", request.signature,
                            int((~allowed).sum()), len(images), ", ".join(reasons))  # fmt: skip
                blocked = ["blocked"] * len(users)
                return RequestResult(request, images, d_t, consistency, users, None, blocked, verdicts)
            choice = pick(allowed)
        safety = [
            "passed" if (choice.candidates[u] == unguarded.candidates[u]).all() else "replaced"
            for u in range(len(users))
        ]
        return RequestResult(request, images, d_t, consistency, users, choice, safety, verdicts)

    def target_similarities(
        self, request: GenerationRequest, candidate_rows: np.ndarray, target_image: Image | None
    ) -> np.ndarray:
        """d_t of each candidate: to the target's keywords, its catalog image, or both (geometric mean), as
        `target_reference` says; an item without an image is compared with its keywords."""
        [text_row] = self.scorer.text_embeddings([request.target_text])
        by_text = similarity(candidate_rows @ text_row)
        if self.target_reference == "keywords" or target_image is None:
            return by_text
        [image_row] = self.scorer.image_embeddings([target_image])
        by_image = similarity(candidate_rows @ image_row)
        return by_image if self.target_reference == "image" else np.sqrt(by_text * by_image)

    def _preference_rows(self, choosers: Sequence[Chooser], cache: dict[str, np.ndarray] | None) -> np.ndarray:
        # A user is in a request per target item (and campaign): embed each preference text once.
        cache = {} if cache is None else cache
        texts = [c.preference_text for c in choosers]
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        if missing:
            cache.update(zip(missing, self.scorer.text_embeddings(missing), strict=True))
        return np.stack([cache[t] for t in texts])


def smaller_batch(error: Exception, batch_size: int, image_size: int) -> int:
    """The batch size to try after running out of memory at `batch_size`: half of it; at 1 there is nothing
    left to halve, and the error says what ran out and what is free."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if batch_size > 1:
        log.warning("out of memory drawing %d images of %dx%d: trying %d at a time", batch_size, image_size,
                    image_size, batch_size // 2)  # fmt: skip
        return batch_size // 2
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        memory = f"{free / 2**20:,.0f} of {total / 2**20:,.0f} MiB free on {torch.cuda.get_device_name()}"
    else:
        memory = "no CUDA device to ask about free memory"
    raise RuntimeError(
        f"out of memory drawing even 1 image of {image_size}x{image_size} at batch size 1 ({memory}): lower "
        "PMG_GENERATION__IMAGE_SIZE, free the GPU, or run on a larger one"
    ) from error
