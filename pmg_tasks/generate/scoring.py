"""Choosing among candidates the PMG way (Shen et al., WWW 2024, section 3.4).

d_p and d_t are CLIP similarities of an image to the user's preference keywords and to the target item's
keywords; z = alpha * log(d_p) + (1 - alpha) * log(d_t) trades one against the other, and the best z wins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

# Cosine similarity is mapped to (0, 1]; the floor keeps log(d) finite for an image opposite to its text.
SIMILARITY_FLOOR = 1e-6


@dataclass(frozen=True)
class CandidateScore:
    d_p: float
    d_t: float
    z: float


def creative_score(d_p: float, d_t: float, alpha: float) -> float:
    """PMG's z: alpha weighs similarity to the user's preference against similarity to the target item."""
    return alpha * math.log(d_p) + (1.0 - alpha) * math.log(d_t)


def rank_by_z(scores: Sequence[CandidateScore]) -> list[int]:
    """Positions of `scores`, best z first; ties keep generation order so a rerun keeps the same ones."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i].z, i))


class ClipScorer:
    """A CLIP model and its processor, scoring images against texts."""

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

    def similarities(self, images: Sequence[Image], texts: Sequence[str]) -> list[float]:
        """d for each pair (images[i], texts[i]): cosine similarity of their CLIP embeddings mapped from
        [-1, 1] to (0, 1] as (1 + cos) / 2, floored at SIMILARITY_FLOOR."""
        import torch

        with torch.inference_mode():
            return self._similarities(self._image_embeddings(images), texts)

    def score(
        self,
        images: Sequence[Image],
        preference_texts: Sequence[str],
        target_texts: Sequence[str],
        alphas: Sequence[float],
    ) -> list[CandidateScore]:
        """d_p, d_t and z for each image, against its own preference text, target text and alpha."""
        import torch

        with torch.inference_mode():
            image_embeddings = self._image_embeddings(images)
            d_p = self._similarities(image_embeddings, preference_texts)
            d_t = self._similarities(image_embeddings, target_texts)
        return [
            CandidateScore(d_p=p, d_t=t, z=creative_score(p, t, alpha))
            for p, t, alpha in zip(d_p, d_t, alphas, strict=True)
        ]

    def _similarities(self, image_embeddings: torch.Tensor, texts: Sequence[str]) -> list[float]:
        import torch

        # Candidates of one request share their texts: embed each distinct text once.
        row_of_text = {text: row for row, text in enumerate(dict.fromkeys(texts))}
        text_embeddings = self._text_embeddings(list(row_of_text))
        rows = torch.tensor([row_of_text[text] for text in texts], device=text_embeddings.device)
        cosine = (image_embeddings * text_embeddings[rows]).sum(dim=-1)
        return ((1.0 + cosine) / 2.0).clamp(min=SIMILARITY_FLOOR, max=1.0).tolist()

    def _image_embeddings(self, images: Sequence[Image]) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, dtype=self.model.dtype)
        features = self.model.get_image_features(pixel_values=pixels).pooler_output
        return _unit(features)

    def _text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.processor(text=list(texts), padding=True, truncation=True, return_tensors="pt")
        tokens = tokens.to(self.device)
        features = self.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).pooler_output
        return _unit(features)


def _unit(features: torch.Tensor) -> torch.Tensor:
    import torch

    # Cosines in float32: half precision would round close candidates to the same score.
    return torch.nn.functional.normalize(features.float(), dim=-1)
