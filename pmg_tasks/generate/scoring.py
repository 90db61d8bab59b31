"""CLIP embeddings of candidate images and of the texts they are scored against (PMG section 3.4).

A scorer turns images and texts into unit-length vectors in one space; every similarity PMG uses (d_p to a
user's preference keywords, d_t to the target item, c to the headline) is a cosine between them, mapped to
(0, 1] by `choice.similarity`. Embedding once and comparing by matrix products is what lets one generation
serve a whole segment: each candidate image and each distinct text is encoded exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image


class Scorer(Protocol):
    def image_embeddings(self, images: Sequence[Image]) -> np.ndarray:
        """`[len(images), dim]` unit-length float32 rows."""
        ...

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """`[len(texts), dim]` unit-length float32 rows; a text that repeats is encoded once."""
        ...


class ClipScorer:
    """A transformers CLIP model and its processor."""

    def __init__(self, model, processor, device: str = "cpu"):
        self.model = model
        self.processor = processor
        self.device = device

    @classmethod
    def load(cls, directory: Path, device: str = "cpu", dtype: torch.dtype | None = None) -> ClipScorer:
        """The CLIP model and processor saved in `directory`, on `device`."""
        import transformers
        from transformers import CLIPModel, CLIPProcessor

        # Task logs are files: loading progress bars only add noise to them.
        transformers.utils.logging.disable_progress_bar()
        model = CLIPModel.from_pretrained(directory, dtype=dtype).to(device).eval()
        return cls(model, CLIPProcessor.from_pretrained(directory), device)

    def image_embeddings(self, images: Sequence[Image]) -> np.ndarray:
        import torch

        if not images:
            return np.zeros((0, self.model.config.projection_dim), dtype=np.float32)
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            output = self.model.get_image_features(pixel_values=pixels.to(self.device, dtype=self.model.dtype))
        return _unit(output)

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        distinct = list(dict.fromkeys(texts))
        if not distinct:
            return np.zeros((0, self.model.config.projection_dim), dtype=np.float32)
        tokens = self.processor(text=distinct, padding=True, truncation=True, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            output = self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
        rows = {text: row for row, text in enumerate(distinct)}
        return _unit(output)[[rows[text] for text in texts]]

    def similarities(self, images: Sequence[Image], texts: Sequence[str]) -> np.ndarray:
        """d for each pair (images[i], texts[i]), in (0, 1]."""
        from pmg_tasks.generate.choice import similarity

        cosine = (self.image_embeddings(images) * self.text_embeddings(texts)).sum(axis=1)
        return similarity(cosine)


class OpenClipScorer:
    """An open_clip model (GPU workers: the `gpu` extra) from a folder in open_clip's hub layout:
    `open_clip_config.json` (`model_cfg`, `preprocess_cfg`) beside `open_clip_model.safetensors` or
    `open_clip_pytorch_model.bin`. Same embeddings, same similarities as `ClipScorer`."""

    CONFIG = "open_clip_config.json"
    WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

    def __init__(self, model, preprocess, tokenizer, device: str):
        self.model, self.preprocess, self.tokenizer, self.device = model, preprocess, tokenizer, device

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> OpenClipScorer:
        import json
        import tempfile

        try:
            import open_clip
        except ImportError as error:
            raise ImportError(
                f"{directory} holds an open_clip model, and open_clip is not installed here: install the GPU "
                "extra (requirements-gpu.txt) on this worker, or point PMG_MODELS__CLIP at a transformers CLIP"
            ) from error
        config = json.loads((directory / cls.CONFIG).read_text())
        weights = next((directory / name for name in cls.WEIGHTS if (directory / name).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{directory} has {cls.CONFIG} but none of {list(cls.WEIGHTS)}")
        name = f"pmg-{directory.name}"
        with tempfile.TemporaryDirectory() as tmp:
            # open_clip's public way to know an architecture: a config file named after the model.
            (Path(tmp) / f"{name}.json").write_text(json.dumps(config["model_cfg"]))
            open_clip.add_model_config(Path(tmp) / f"{name}.json")
        preprocess_cfg = config.get("preprocess_cfg", {})
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=str(weights), device=device, image_mean=preprocess_cfg.get("mean"),
            image_std=preprocess_cfg.get("std"),
        )  # fmt: skip
        return cls(model.eval(), preprocess, open_clip.get_tokenizer(name), device)

    def image_embeddings(self, images: Sequence[Image]) -> np.ndarray:
        import torch

        if not images:
            return np.zeros((0, self.model.visual.output_dim), dtype=np.float32)
        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in images]).to(self.device)
        with torch.inference_mode(), torch.autocast(self.device, enabled=self.device == "cuda"):
            return _unit(self.model.encode_image(pixels))

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        distinct = list(dict.fromkeys(texts))
        if not distinct:
            return np.zeros((0, self.model.visual.output_dim), dtype=np.float32)
        with torch.inference_mode(), torch.autocast(self.device, enabled=self.device == "cuda"):
            rows = _unit(self.model.encode_text(self.tokenizer(distinct).to(self.device)))
        index = {text: row for row, text in enumerate(distinct)}
        return rows[[index[text] for text in texts]]


def load_scorer(directory: Path, device: str = "cpu", dtype: torch.dtype | None = None) -> Scorer:
    """The scorer for the CLIP saved in `directory`: open_clip's hub layout, else a transformers CLIP."""
    if (directory / OpenClipScorer.CONFIG).is_file():
        return OpenClipScorer.load(directory, device)
    return ClipScorer.load(directory, device, dtype)


def _unit(output) -> np.ndarray:
    import torch

    # transformers 5 returns a model output whose pooler_output is the projected embedding.
    features = getattr(output, "pooler_output", output)
    # Cosines in float32: half precision would round close candidates to the same score.
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()
