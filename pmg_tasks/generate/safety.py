"""Image safety: no flagged candidate is ever published.

Two checks, both on what would be kept:
- the diffusion pipeline's own safety checker, where the model has one (its verdict comes with the images);
- an offline image classifier whose weights ship inside a registry package: NudeNet's ONNX detector
  (`nudenet` wheel, `320n.onnx`), run with onnxruntime on the CPU. A candidate is flagged when it detects a
  blocked class at or above the minimum score.

The choice (creatives.py) asks `check` only about candidates some user would get; a flagged one is
excluded and the users who chose it get their next best, until every kept candidate has passed. Each
verdict names its reason, e.g. `nudenet:FEMALE_BREAST_EXPOSED` or `pipeline_safety_checker`.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from PIL.Image import Image

    from pmg_tasks.settings import Safety

log = logging.getLogger(__name__)

PIPELINE_CHECKER = "pipeline_safety_checker"


@dataclass(frozen=True)
class Verdict:
    safe: bool
    reason: str = ""


SAFE = Verdict(True)


class NudeNetClassifier:
    """NudeNet's detector, loaded once; flags an image holding a blocked class at or above `min_score`."""

    def __init__(self, blocked_classes: Sequence[str], min_score: float):
        from nudenet import NudeDetector

        self.detector = NudeDetector()
        self.blocked = frozenset(blocked_classes)
        self.min_score = min_score

    def __call__(self, image: Image) -> Verdict:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        found = [d for d in self.detector.detect(buffer.getvalue()) if d["class"] in self.blocked]
        found = [d for d in found if d["score"] >= self.min_score]
        if not found:
            return SAFE
        worst = max(found, key=lambda d: d["score"])
        return Verdict(False, f"nudenet:{worst['class']}")


class ImageSafety:
    """The checks a worker runs on every candidate it would keep."""

    def __init__(self, classifier=None):
        self.classifier = classifier

    @classmethod
    def from_settings(cls, safety: Safety) -> ImageSafety:
        if not safety.enabled or safety.classifier == "none":
            return cls(None)
        return cls(NudeNetClassifier(safety.blocked_classes, safety.min_score))

    def check(self, image: Image, pipeline_flag: bool = False) -> Verdict:
        if pipeline_flag:
            return Verdict(False, PIPELINE_CHECKER)
        return self.classifier(image) if self.classifier is not None else SAFE


def safety_counts(rows: pd.DataFrame) -> dict:
    """What the safety checks did in a result table: flagged candidates by reason, users whose creative a
    flagged one gave way to, and blocked requests and users."""
    flagged: Counter[str] = Counter()
    if rows.empty:
        return {"flagged": {}, "replaced_users": 0, "blocked_requests": 0, "blocked_users": 0}
    for text in rows.drop_duplicates("request_key")["flagged"]:
        flagged.update(json.loads(text or "{}"))
    first = rows[rows["rank"] <= 1]
    return {
        "flagged": dict(sorted(flagged.items())),
        "replaced_users": int((first["safety"] == "replaced").sum()),
        "blocked_requests": int(rows.loc[rows["safety"] == "blocked", "request_key"].nunique()),
        "blocked_users": int((first["safety"] == "blocked").sum()),
    }
