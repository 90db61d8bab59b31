"""Local model folders, and the diffusion pipeline loaded from one: on the best device here, with the
preference tokens' learned rows, and its tokenizer alone for counting a prompt's tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

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


def inference_device(dtype: str = "auto", directory: Path | None = None) -> tuple[str, torch.dtype]:
    """Where and in what precision to draw: on a GPU in bfloat16 (float16 where the model's own config asks
    for it), on a CPU in float32; `dtype` names one explicitly."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype != "auto":
        return device, getattr(torch, dtype)
    if device == "cpu":
        return device, torch.float32
    return device, torch.float16 if _asks_for_float16(directory) else torch.bfloat16


def _asks_for_float16(directory: Path | None) -> bool:
    import json

    config = directory / "unet" / "config.json" if directory is not None else None
    if config is None or not config.is_file():
        return False
    return json.loads(config.read_text()).get("torch_dtype") == "float16"


def training_device() -> tuple[str, torch.dtype]:
    """("cuda", float32) when this worker has a GPU, else ("cpu", float32): token rows train in full
    precision, where small gradient steps survive."""
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu"), torch.float32


def load_diffusion_pipeline(directory: Path, device: str, dtype: torch.dtype, compile_unet: bool = False):
    """The text-to-image pipeline saved in `directory` (its class comes from model_index.json), on `device`.

    On a GPU: PyTorch's scaled-dot-product attention in every attention layer, the UNet and VAE in
    channels-last memory layout (what cuDNN's convolutions prefer), and with `compile_unet` the UNet
    compiled by `torch.compile` (once per process: the compiled graph is reused by every later call)."""
    import diffusers
    import torch
    import transformers
    from diffusers import DiffusionPipeline

    # Task logs are files: loading progress bars only add noise to them.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    # Loading straight into memory (without accelerate's meta-device path, which CPU installs leave out).
    pipeline = DiffusionPipeline.from_pretrained(directory, dtype=dtype, low_cpu_mem_usage=False).to(device)
    pipeline.set_progress_bar_config(disable=True)
    if device == "cuda":
        from diffusers.models.attention_processor import AttnProcessor2_0

        pipeline.unet.set_attn_processor(AttnProcessor2_0())
        pipeline.unet.to(memory_format=torch.channels_last)
        pipeline.vae.to(memory_format=torch.channels_last)
    if compile_unet:
        pipeline.unet = torch.compile(pipeline.unet)
    return pipeline


def apply_token_embeddings(pipeline, vectors: Mapping[str, torch.Tensor]) -> None:
    """Makes each preference token a word of the pipeline's tokenizer with its learned input-embedding row,
    through diffusers' own textual-inversion loader (one `{token: row}` state dict per token)."""
    if vectors:
        pipeline.load_textual_inversion([{token: vector.reshape(1, -1)} for token, vector in vectors.items()])


def prompt_tokenizer(directory: Path, tokens: Sequence[str] = ()):
    """The diffusion pipeline's own tokenizer (its `tokenizer/` folder), with `tokens` added as single words,
    for counting what a prompt costs of the text encoder's budget without loading any weights."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
    new = [token for token in tokens if token not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens(new)
    return tokenizer
