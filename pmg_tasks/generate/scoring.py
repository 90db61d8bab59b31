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


def _unit(output) -> np.ndarray:
    import torch

    # transformers 5 returns a model output whose pooler_output is the projected embedding.
    features = getattr(output, "pooler_output", output)
    # Cosines in float32: half precision would round close candidates to the same score.
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()
