"""Item image features for the preference GNN's image view.

An item has an image when its `image_uri` names an object in the store (pmg_tasks/item_images.py); bytes
that are not an image count as no image, and an item without one simply stays out of the image view.

Two encoders: `histogram` (default) is a deterministic colour and texture histogram that needs no model;
`clip` is the CLIP image embedding of `settings.models.clip`, where one is configured.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from pmg_tasks.store import ObjectStore

log = logging.getLogger(__name__)

# Hue x saturation x value bins, then gradient orientations: 8*3*3 + 8 = 80 numbers per image.
_HUE, _SATURATION, _VALUE, _ORIENTATIONS = 8, 3, 3, 8
HISTOGRAM_WIDTH = _HUE * _SATURATION * _VALUE + _ORIENTATIONS
# Small enough to be fast, large enough that texture survives.
_THUMBNAIL = 64


def image_histogram(data: bytes) -> np.ndarray:
    """A unit-length colour and texture description of the image in `data`.

    Colour: the share of pixels in each HSV bin. Texture: the share of gradient energy in each of 8
    orientations. Square roots before normalising (Hellinger), so one dominant bin does not drown the rest.
    The same bytes give the same vector everywhere. Raises PIL's UnidentifiedImageError for non-images.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB").resize((_THUMBNAIL, _THUMBNAIL), Image.Resampling.BILINEAR)
        hsv = np.asarray(rgb.convert("HSV"), dtype=np.int64)
        gray = np.asarray(rgb.convert("L"), dtype=np.float64)
    hue = hsv[..., 0] * _HUE // 256
    saturation = hsv[..., 1] * _SATURATION // 256
    value = hsv[..., 2] * _VALUE // 256
    colour_bin = (hue * _SATURATION + saturation) * _VALUE + value
    colour = np.bincount(colour_bin.ravel(), minlength=_HUE * _SATURATION * _VALUE) / colour_bin.size

    dy, dx = np.gradient(gray)
    magnitude = np.hypot(dx, dy)
    # Orientation modulo pi: an edge from dark to light reads the same as light to dark.
    orientation = ((np.arctan2(dy, dx) % np.pi) / np.pi * _ORIENTATIONS).astype(np.int64) % _ORIENTATIONS
    texture = np.bincount(orientation.ravel(), weights=magnitude.ravel(), minlength=_ORIENTATIONS)
    texture = texture / texture.sum() if texture.sum() > 0 else texture

    vector = np.sqrt(np.concatenate([colour, texture]))
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def item_image_features(
    items: pd.DataFrame, store: ObjectStore, *, encoder: str = "histogram", clip_model: str = ""
) -> dict[str, np.ndarray]:
    """Item id -> image feature vector, for the items of `items` whose `image_uri` the store holds.

    `encoder` is `histogram` or `clip` (which needs `clip_model`, a local CLIP directory). Items whose
    image cannot be read are left out, and counted in the log.
    """
    from pmg_tasks.item_images import read_item_images

    if "image_uri" not in items.columns:
        return {}
    named = items.dropna(subset=["image_uri"]).drop_duplicates("item_id", keep="last")
    images = read_item_images(named, store)
    if encoder == "clip":
        if not clip_model:
            raise ValueError("preferences.image_features is 'clip' but models.clip is not set")
        features = _clip_features(images, clip_model)
    elif encoder == "histogram":
        features = {}
        for item_id, data in images.items():
            try:
                features[item_id] = image_histogram(data)
            except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
                log.warning(
                    "image of item %s is unreadable (%s); it stays out of the image view", item_id, error
                )
    else:
        raise ValueError(f"unknown image encoder {encoder!r}; expected 'histogram' or 'clip'")
    if len(named):
        log.info(
            "image view: %d of %d items with an image_uri have a readable image", len(features), len(named)
        )
    return features


def _clip_features(
    images: Mapping[str, bytes], directory: str, batch_size: int = 32
) -> dict[str, np.ndarray]:
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(directory).eval()
    processor = CLIPProcessor.from_pretrained(directory)
    ids, features = list(images), {}
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size]
            pictures = [Image.open(io.BytesIO(images[item_id])).convert("RGB") for item_id in batch]
            pixels = processor(images=pictures, return_tensors="pt")["pixel_values"]
            output = model.get_image_features(pixel_values=pixels)
            # transformers 5 returns a model output here; older versions returned the tensor itself.
            vectors = getattr(output, "pooler_output", output)
            vectors = torch.nn.functional.normalize(vectors.float(), dim=-1).numpy()
            features.update(zip(batch, vectors, strict=True))
    return features
