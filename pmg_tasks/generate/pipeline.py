"""The diffusion side of a shard: find the model, load it on the best device here, draw seeded images."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from pmg_tasks.settings import Generation

# The file `from_pretrained` reads first in a model directory of each role.
MODEL_INDEX = {"diffusion": "model_index.json", "clip": "config.json", "llm": "config.json"}


def require_model_dir(path: str, role: str) -> Path:
    """The local directory configured for model `role` (diffusion, clip, llm), or an error that says how to
    get one. Only local directories are accepted: workers never download weights."""
    fix = (
        f"set PMG_MODELS__{role.upper()} to a directory written by save_pretrained, "
        "or run `pmg models build-test-size --out DIR`"
    )
    if not path:
        raise ValueError(f"settings.models.{role} is empty: {fix}")
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"settings.models.{role} = {path!r} is not a directory: {fix}")
    if not (directory / MODEL_INDEX[role]).is_file():
        raise FileNotFoundError(
            f"settings.models.{role} = {path!r} has no {MODEL_INDEX[role]}, so it holds no saved model: {fix}"
        )
    return directory


def inference_device() -> tuple[str, torch.dtype]:
    """("cuda", float16) when this worker has a GPU, else ("cpu", float32)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.float16
    return "cpu", torch.float32


def load_diffusion_pipeline(directory: Path, device: str, dtype: torch.dtype):
    """The text-to-image pipeline saved in `directory` (its class comes from model_index.json), on `device`."""
    import diffusers
    import transformers
    from diffusers import DiffusionPipeline

    # Task logs are files: loading progress bars only add noise to them.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    pipeline = DiffusionPipeline.from_pretrained(directory, dtype=dtype).to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def render_images(pipeline, prompts: list[str], seeds: list[int], generation: Generation) -> list[Image]:
    """One image per (prompt, seed), drawn in one batch. Each image has its own generator; they live on
    the CPU so a seed gives the same starting noise on any device."""
    import torch

    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    with torch.inference_mode():
        return pipeline(
            prompt=prompts,
            generator=generators,
            num_inference_steps=generation.inference_steps,
            guidance_scale=generation.guidance_scale,
            height=generation.image_size,
            width=generation.image_size,
        ).images
