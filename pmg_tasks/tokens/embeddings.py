"""Preference tokens as learned rows of the diffusion text encoder's input embeddings (textual inversion).

PMG conditions the diffusion model on a soft preference embedding; DPPMG feeds discrete preference tokens to
the generators. They meet here: every token in use (`<pref_txt_0_3>`) becomes a new word of the pipeline's
tokenizer whose input-embedding row is learned, textual-inversion style:

    1. add the token to the tokenizer and a row to the text encoder's input embeddings;
    2. start the row at the mean embedding of the token's descriptor words (what its users like, in words),
       or at last night's row for the token, when the base model is the same;
    3. train only those rows with the pipeline's own denoising loss on the images of the items the token's
       users engaged with; the UNet, the VAE and the rest of the text encoder stay frozen.

Each token's row is saved on its own, in the file format diffusers' `load_textual_inversion` reads (one
safetensors file holding `{token: tensor[1, dim]}`), so any diffusers pipeline can load them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

log = logging.getLogger(__name__)

# Prompts a token is trained in, as textual inversion trains a concept in several phrasings.
TEMPLATES = (
    "a picture in the taste of {token}",
    "{token} style",
    "a product shot for {token}",
    "an image {token} would like",
)
# Where a token's descriptor says nothing (no keyword or category behind it).
FALLBACK_WORDS = ("varied", "taste")


def token_file_name(token: str) -> str:
    """`<pref_txt_0_3>` -> `pref_txt_0_3.safetensors`."""
    return token.strip("<>") + ".safetensors"


def to_safetensors(token: str, vector: torch.Tensor) -> bytes:
    """One token's row in diffusers' textual-inversion format: `{token: tensor[1, dim]}`, float32."""
    import torch
    from safetensors.torch import save

    return save({token: vector.detach().to("cpu", dtype=torch.float32).reshape(1, -1).contiguous()})


def from_safetensors(data: bytes) -> tuple[str, torch.Tensor]:
    """The token and its row from `to_safetensors` bytes; raises ValueError for anything else."""
    from safetensors.torch import load

    try:
        state = load(data)
    except Exception as error:  # safetensors raises its own error types for damaged bytes
        raise ValueError(f"not a token-embedding file ({error})") from error
    if len(state) != 1:
        raise ValueError(f"a token-embedding file holds one token, this one holds {sorted(state)}")
    [(token, vector)] = state.items()
    return token, vector.reshape(-1)


def add_tokens(tokenizer, text_encoder, tokens: Sequence[str]) -> dict[str, int]:
    """Adds `tokens` to the tokenizer (each one word, never split) and rows for them to the text encoder's
    input embeddings; returns each token's id. Tokens the tokenizer knows already keep their id."""
    new = [token for token in tokens if token not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens(new)
        # Rows start where `set_rows` puts them, so no need for transformers to draw them first.
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return {token: tokenizer.convert_tokens_to_ids(token) for token in tokens}


def descriptor_vector(tokenizer, text_encoder, words: Sequence[str]) -> torch.Tensor:
    """The mean input embedding of the word pieces of `words`: where a token starts before it has seen an
    image, so that it already means what its users like."""
    import torch

    text = " ".join(w for w in words if w and w.strip()) or " ".join(FALLBACK_WORDS)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        return weight[torch.tensor(ids, dtype=torch.long, device=weight.device)].float().mean(dim=0).cpu()


def set_rows(text_encoder, token_ids: Mapping[str, int], vectors: Mapping[str, torch.Tensor]) -> None:
    """Writes each token's vector into its input-embedding row."""
    import torch

    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token, vector in vectors.items():
            weight[token_ids[token]] = vector.to(weight.device, weight.dtype)


def rows(text_encoder, token_ids: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """Each token's current input-embedding row, on the CPU in float32."""
    import torch

    weight = text_encoder.get_input_embeddings().weight.detach()
    return {token: weight[row].to("cpu", dtype=torch.float32).clone() for token, row in token_ids.items()}


@dataclass(frozen=True)
class TrainingResult:
    steps: int
    examples: int
    first_loss: float | None
    final_loss: float | None


def train_token_rows(
    pipeline,
    token_ids: Mapping[str, int],
    images: Mapping[str, Sequence[Image]],
    *,
    steps_per_token: int,
    batch_size: int,
    learning_rate: float,
    resolution: int,
    seed: int = 0,
) -> TrainingResult:
    """Trains the input-embedding rows of the tokens in `images` (token -> its training images) with the
    pipeline's denoising loss; every other weight stays as it was, bit for bit.

    Each optimizer step draws `batch_size` (token, image, template) examples, tokens in turn, so every token
    takes part in about `steps_per_token` steps whatever the others do.
    """
    import torch
    from diffusers import DDPMScheduler

    tokens = sorted(token for token, pictures in images.items() if pictures)
    if not tokens or steps_per_token <= 0:
        return TrainingResult(0, 0, None, None)
    text_encoder, unet, vae = pipeline.text_encoder, pipeline.unet, pipeline.vae
    generator = torch.Generator("cpu").manual_seed(seed)
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    latents = {token: _latents(vae, images[token], resolution, generator) for token in tokens}

    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.eval()
    embedding = text_encoder.get_input_embeddings().weight
    embedding.requires_grad_(True)
    # Only the token rows may move: every other row's gradient is zeroed before the optimizer sees it, and
    # Adam without weight decay leaves a row with zero gradients exactly where it was.
    mask = torch.zeros(embedding.shape[0], 1, device=embedding.device, dtype=embedding.dtype)
    mask[torch.tensor([token_ids[t] for t in tokens], device=embedding.device)] = 1.0
    hook = embedding.register_hook(lambda grad: grad * mask)
    optimizer = torch.optim.Adam([embedding], lr=learning_rate, weight_decay=0.0)

    total_steps = math.ceil(len(tokens) * steps_per_token / batch_size)
    order = [tokens[i] for i in torch.randperm(len(tokens), generator=generator).tolist()]
    losses: list[float] = []
    try:
        for step in range(total_steps):
            batch_tokens = [order[(step * batch_size + i) % len(order)] for i in range(batch_size)]
            loss = denoising_loss(pipeline, noise_scheduler, batch_tokens, latents, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        hook.remove()
        embedding.requires_grad_(False)
    log.info(
        "token embeddings: %d tokens, %d steps of %d examples, loss %.4f -> %.4f",
        len(tokens), total_steps, batch_size, losses[0], losses[-1],
    )  # fmt: skip
    return TrainingResult(total_steps, total_steps * batch_size, losses[0], losses[-1])


def denoising_loss(pipeline, noise_scheduler, tokens: Sequence[str], latents: Mapping, generator) -> torch.Tensor:
    """The pipeline's own training objective on one example per token: one of its images' latents, noised at
    a random timestep, and the UNet asked to predict the noise (or the velocity) from a prompt holding the
    token, one of TEMPLATES."""
    import torch
    import torch.nn.functional as F

    unet, tokenizer = pipeline.unet, pipeline.tokenizer
    device = unet.device
    picks = [int(torch.randint(len(latents[t]), (1,), generator=generator)) for t in tokens]
    clean = torch.stack([latents[t][p] for t, p in zip(tokens, picks, strict=True)]).to(device)
    prompts = [TEMPLATES[int(torch.randint(len(TEMPLATES), (1,), generator=generator))].format(token=t) for t in tokens]
    input_ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt",
    ).input_ids.to(device)  # fmt: skip
    noise = torch.randn(clean.shape, generator=generator).to(device, clean.dtype)
    timesteps = torch.randint(noise_scheduler.config.num_train_timesteps, (len(tokens),), generator=generator)
    timesteps = timesteps.to(device)
    noisy = noise_scheduler.add_noise(clean, noise, timesteps)
    hidden = pipeline.text_encoder(input_ids)[0].to(unet.dtype)
    predicted = unet(noisy.to(unet.dtype), timesteps, encoder_hidden_states=hidden).sample
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(clean, noise, timesteps)
    else:
        target = noise
    return F.mse_loss(predicted.float(), target.float())


def _latents(vae, pictures: Sequence[Image], resolution: int, generator) -> torch.Tensor:
    """The VAE latents of each picture, encoded once (the mean of the posterior, so the same picture always
    gives the same latents), scaled as the UNet expects them."""
    import numpy as np
    import torch
    from PIL import Image as PILImage

    arrays = []
    for picture in pictures:
        square = _center_square(picture.convert("RGB")).resize(
            (resolution, resolution), PILImage.Resampling.BICUBIC
        )
        arrays.append(np.asarray(square, dtype=np.float32) / 127.5 - 1.0)
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(vae.device, vae.dtype)
    with torch.no_grad():
        encoded = vae.encode(pixels).latent_dist.mean
    return (encoded * vae.config.scaling_factor).float().cpu()


def _center_square(picture: Image) -> Image:
    width, height = picture.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return picture.crop((left, top, left + side, top + side))
