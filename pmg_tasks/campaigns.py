"""Campaigns: what marketing ops schedule. A YAML file they fill in, checked strictly on load.

    campaigns:
      - campaign_id: winter-classics
        name: Winter classics
        start_date: 2026-11-01
        end_date: 2026-12-31
        target_items: [m0001, m0042]
        audience: {categories: [Drama], max_users: 500}
        personalization: segment     # one generation per taste segment; `user`: one per user
        variants: 1
        alpha: 0.6                   # weighs the choice among candidates: 1 = the user's taste, 0 = the item
        style: cinematic poster, warm light
        negative_prompt: blurry, text
        denylist: [gore]
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pmg_tasks.text_safety import Denylist

CAMPAIGN_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class CampaignError(ValueError):
    """The campaigns file is wrong; the message names the campaign, the field and the fix."""


class Audience(BaseModel):
    model_config = ConfigDict(extra="forbid")

    categories: list[str] = Field(default_factory=list, description="users whose history touches any of these")
    max_users: int | None = Field(None, ge=1, description="cap, taking the most engaged users first")


class Campaign(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaign_id: str
    name: str = ""
    start_date: dt.date
    end_date: dt.date
    target_items: list[str] = Field(min_length=1)
    audience: Audience = Audience()
    # segment: one generation per (segment, target item), shared by the segment's users, each of whom gets
    # their own best candidates; user: one generation per (user, target item), the user's keywords in it.
    personalization: Literal["segment", "user"] = "segment"
    variants: int = Field(1, ge=1, le=16, description="creatives kept per user and target item")
    candidates: int | None = Field(None, ge=1, le=64, description="images generated to choose from")
    alpha: float | None = Field(
        None, ge=0.0, le=1.0,
        description="weighs the choice among candidates: 1 = by the user's taste only, 0 = by the item only",
    )  # fmt: skip
    consistency_weight: float = Field(
        0.0, ge=0.0, le=1.0, description="weight of image-headline consistency in the choice; 0 keeps PMG's z"
    )
    style: str = Field("", max_length=200)
    negative_prompt: str | None = Field(None, max_length=300, description="default: the scenario's")
    denylist: list[str] = Field(default_factory=list)

    @field_validator("campaign_id")
    @classmethod
    def _id_is_a_path_segment(cls, value: str) -> str:
        # The id becomes part of object-store keys, so it must be a safe path segment.
        if not CAMPAIGN_ID.match(value):
            raise ValueError("use 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit")
        return value

    @model_validator(mode="after")
    def _dates_and_counts_agree(self) -> Campaign:
        if self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")
        if self.candidates is not None and self.candidates < self.variants:
            raise ValueError(f"candidates ({self.candidates}) must be at least variants ({self.variants})")
        # The denylist keeps words out of every prompt, the negative one included: naming a denied word
        # there to steer away from it would still send it to the model.
        if self.negative_prompt and Denylist(self.denylist).denies(self.negative_prompt):
            raise ValueError(
                "negative_prompt names a word the denylist forbids; the denylist keeps words out of every "
                "prompt, the negative one included: remove it from one of them"
            )
        return self

    @functools.cached_property
    def denied(self) -> Denylist:
        """The campaign's denylist, compiled once."""
        return Denylist(self.denylist)

    def is_active(self, day: dt.date) -> bool:
        return self.start_date <= day <= self.end_date


class CampaignFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaigns: list[Campaign]

    @model_validator(mode="after")
    def _ids_unique(self) -> CampaignFile:
        seen: set[str] = set()
        for campaign in self.campaigns:
            if campaign.campaign_id in seen:
                raise ValueError(f"campaign_id {campaign.campaign_id!r} appears twice")
            seen.add(campaign.campaign_id)
        return self


def load_campaigns(path: str | Path) -> list[Campaign]:
    """All campaigns in the file, validated; raises CampaignError with every problem listed."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CampaignError(
            f"campaigns file {path} does not exist: write one (see pmg_tasks/campaigns.py) "
            "or point PMG_CAMPAIGNS_FILE at it"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise CampaignError(f"campaigns file {path} is not valid YAML: {error}") from None
    try:
        return CampaignFile.model_validate(raw).campaigns
    except ValidationError as error:
        problems = "; ".join(_describe(raw, e) for e in error.errors())
        raise CampaignError(f"campaigns file {path} has errors: {problems}") from None


def active_campaigns(path: str | Path, ds: str) -> list[Campaign]:
    day = dt.date.fromisoformat(ds)
    return [c for c in load_campaigns(path) if c.is_active(day)]


def _describe(raw: object, error: dict) -> str:
    location = list(error["loc"])
    where = ".".join(str(part) for part in location)
    # Name the campaign by its id rather than its list position when we can.
    if location[:1] == ["campaigns"] and len(location) > 1 and isinstance(location[1], int):
        try:
            campaign_id = raw["campaigns"][location[1]].get("campaign_id", f"#{location[1]}")
            where = f"campaign {campaign_id!r}: " + ".".join(str(p) for p in location[2:])
        except (KeyError, TypeError, AttributeError, IndexError):
            pass
    return f"{where} {error['msg']}".strip()
