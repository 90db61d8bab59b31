"""Campaigns: what marketing ops schedule. One YAML file per campaign in the campaigns folder, checked
strictly on load (docs/campaigns.md has every field):

    # campaigns/winter-classics.yaml  (the file name is the campaign id)
    name: Winter classics
    start_date: 2026-11-01
    end_date: 2026-12-31
    target_items: [m0001, m0042]      # or target_filter: {categories: [Drama], attributes: {era: 1980s}}
    audience: {categories: [Drama], recency_days: 7, min_engagement: 3, max_users: 500}
    personalization: segment          # one generation per taste segment; `user`: one per user
    variants: 1
    alpha: 0.6                        # weighs the choice among candidates: 1 = the user's taste, 0 = the item
    style: cinematic poster, warm light
    negative_prompt: blurry, text
    denylist: [gore]
    priority: 10                      # higher plans (and lists) first
    review: required                  # a person approves the creatives before they are published

The older layout, one file holding `campaigns: [...]`, is still read where the setting names a file.

A broken campaign never takes the night down: `read_campaigns` returns the good campaigns and a problem
per broken one (its file, the field and the fix), and the run skips it, names it in the log and the report.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pmg_tasks.text_safety import Denylist, split_categories

if TYPE_CHECKING:
    import pandas as pd

    from pmg_tasks.settings import CampaignLimits, Settings
    from pmg_tasks.store import ObjectStore

log = logging.getLogger(__name__)

CAMPAIGN_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
CAMPAIGN_SUFFIXES = (".yaml", ".yml")


class CampaignError(ValueError):
    """A campaign is wrong; the message names the campaign, the field and the fix."""


class Audience(BaseModel):
    model_config = ConfigDict(extra="forbid")

    categories: list[str] = Field(default_factory=list, description="users whose history touches any of these")
    recency_days: int | None = Field(None, ge=1, description="users with an event in the last N days of the window")
    min_engagement: int | None = Field(None, ge=1, description="users whose engagement score is at least this")
    max_users: int | None = Field(None, ge=1, description="cap per night, taking the most engaged users first")


class TargetFilter(BaseModel):
    """Target items chosen from the catalog by what they are, instead of by id."""

    model_config = ConfigDict(extra="forbid")

    categories: list[str] = Field(default_factory=list, description="items in any of these categories")
    attributes: dict[str, str] = Field(default_factory=dict, description="items whose attributes have all of these")
    max_items: int = Field(3, ge=1, le=100, description="at most this many matching items, by item id")

    @model_validator(mode="after")
    def _says_something(self) -> TargetFilter:
        if not self.categories and not self.attributes:
            raise ValueError("a target_filter needs categories or attributes (or use target_items)")
        return self

    def matches(self, categories: object, attributes: object) -> bool:
        if self.categories and not set(self.categories).intersection(split_categories(categories)):
            return False
        found = _attributes(attributes)
        return all(str(found.get(name, "")).lower() == value.lower() for name, value in self.attributes.items())


class Campaign(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaign_id: str
    name: str = ""
    start_date: dt.date
    end_date: dt.date
    target_items: list[str] = Field(default_factory=list, description="catalog item ids")
    target_filter: TargetFilter | None = None
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
    image_size: int | None = Field(None, ge=8, description="pixels per side; default: the profile's")
    inference_steps: int | None = Field(None, ge=1, description="diffusion steps; default: the profile's")
    priority: int = Field(0, ge=-1000, le=1000, description="higher plans first")
    review: Literal["required", "none"] = "none"

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
        if bool(self.target_items) == (self.target_filter is not None):
            raise ValueError("give target_items (item ids) or target_filter (categories/attributes), exactly one")
        # The denylist keeps words out of every prompt, the negative one included: naming a denied word
        # there to steer away from it would still send it to the model.
        if self.negative_prompt and Denylist(self.denylist).denies(self.negative_prompt):
            raise ValueError(
                "negative_prompt names a word the denylist forbids; the denylist keeps words out of every "
                "prompt, the negative one included: remove it from one of them"
            )
        return self

    @model_validator(mode="after")
    def _within_the_profile(self, info: ValidationInfo) -> Campaign:
        limits = (info.context or {}).get("limits")
        if limits is None:
            return self
        if self.image_size is not None:
            if self.image_size > limits.max_image_size or self.image_size % 8:
                raise ValueError(
                    f"image_size {self.image_size} must be a multiple of 8 and at most {limits.max_image_size} "
                    f"(the limit of the settings profile)"
                )
        if self.inference_steps is not None and self.inference_steps > limits.max_inference_steps:
            raise ValueError(
                f"inference_steps {self.inference_steps} is above {limits.max_inference_steps} (the limit of the "
                "settings profile)"
            )
        return self

    @functools.cached_property
    def denied(self) -> Denylist:
        """The campaign's denylist, compiled once."""
        return Denylist(self.denylist)

    def is_active(self, day: dt.date) -> bool:
        return self.start_date <= day <= self.end_date

    def targets_in(self, items: pd.DataFrame) -> list[str]:
        """The target item ids, in order: the listed ones as given (missing ones too: the caller reports
        them), or the catalog's items that match the filter, at most `max_items`, by item id."""
        if self.target_filter is None:
            return list(dict.fromkeys(self.target_items))
        frame = items.reset_index() if "item_id" not in items.columns else items
        matching = sorted(
            str(item_id)
            for item_id, categories, attributes in zip(
                frame["item_id"], frame["categories"], frame["attributes"], strict=True
            )
            if self.target_filter.matches(categories, attributes)
        )
        return list(dict.fromkeys(matching))[: self.target_filter.max_items]


@dataclass(frozen=True)
class CampaignProblem:
    """Why one campaign is skipped: where it is written, which field, what is wrong and how to fix it."""

    file: str
    campaign_id: str
    field: str
    message: str
    fix: str

    def __str__(self) -> str:
        who = f"campaign {self.campaign_id!r}" if self.campaign_id else "campaign"
        where = f" {self.field}:" if self.field else ""
        return f"{self.file}: {who}:{where} {self.message} (fix: {self.fix})"


@dataclass
class CampaignSet:
    """What a campaigns folder (or file) holds: the campaigns that validated and a problem per one that did
    not, and the file each came from."""

    source: str
    campaigns: list[Campaign] = field(default_factory=list)
    problems: list[CampaignProblem] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # campaign id -> file name

    def active(self, ds: str) -> list[Campaign]:
        """The campaigns running on `ds`, highest priority first, then by id."""
        day = dt.date.fromisoformat(ds)
        chosen = [c for c in self.campaigns if c.is_active(day)]
        return sorted(chosen, key=lambda c: (-c.priority, c.campaign_id))

    def by_id(self, campaign_id: str) -> Campaign:
        for campaign in self.campaigns:
            if campaign.campaign_id == campaign_id:
                return campaign
        raise CampaignError(f"no valid campaign {campaign_id!r} in {self.source}: `pmg campaigns validate` says why")

    def problem_records(self) -> list[dict[str, str]]:
        return [asdict(p) for p in self.problems]


# What to do about each kind of mistake; the field's own fix (FIELD_FIXES) wins where there is one.
ERROR_FIXES = {
    "missing": "add it",
    "extra_forbidden": "remove it, or correct its spelling (docs/campaigns.md lists the fields)",
    "date_from_datetime_parsing": "write the date as YYYY-MM-DD",
    "date_parsing": "write the date as YYYY-MM-DD",
    "date_type": "write the date as YYYY-MM-DD",
    "literal_error": "use one of the values named",
}
FIELD_FIXES = {
    "campaign_id": "name the file <id>.yaml with an id of lowercase letters, digits, '-' or '_'",
    "target_items": "list catalog item ids, e.g. [m00001, m00042], or give a target_filter instead",
    "target_filter": "give categories or attributes, e.g. {categories: [Drama]}",
    "personalization": "use segment (one generation per taste segment) or user (one per user)",
    "review": "use required (a person approves before publishing) or none",
    "image_size": "leave it out for the profile's size, or lower it within the profile's limit",
    "inference_steps": "leave it out for the profile's steps, or lower it within the profile's limit",
}


def read_campaigns(path: str | Path, limits: CampaignLimits | None = None) -> CampaignSet:
    """Every campaign under `path` (a folder of one-campaign files, or one file of `campaigns:`), each
    validated on its own; never raises for what a file says: a broken campaign becomes a problem."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CAMPAIGN_SUFFIXES)
        texts = [(p.name, p.read_text(errors="replace")) for p in files]
        return parse_campaigns(str(path), texts, "folder", limits)
    if path.is_file():
        return parse_campaigns(str(path.parent), [(path.name, path.read_text(errors="replace"))], "file", limits)
    return CampaignSet(
        source=str(path),
        problems=[CampaignProblem(
            str(path), "", "", "the campaigns folder does not exist",
            "make the folder and write one <campaign-id>.yaml per campaign (docs/campaigns.md), or point "
            "PMG_CAMPAIGNS_FILE at it",
        )],  # fmt: skip
    )


def parse_campaigns(
    source: str, texts: Sequence[tuple[str, str]], layout: Literal["folder", "file"],
    limits: CampaignLimits | None = None,
) -> CampaignSet:
    """Campaigns from (file name, YAML text) pairs: in a folder each file is one campaign named by the file;
    in the older layout the one file holds a `campaigns:` list."""
    import yaml

    found = CampaignSet(source=source)
    entries: list[tuple[str, dict[str, Any]]] = []
    for name, text in texts:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as error:
            found.problems.append(CampaignProblem(name, _stem(name) if layout == "folder" else "", "",
                                                  f"not valid YAML: {_first_line(error)}",
                                                  "correct the indentation or quoting at the line named"))  # fmt: skip
            continue
        if layout == "file":
            if not isinstance(raw, dict) or not isinstance(raw.get("campaigns"), list):
                found.problems.append(CampaignProblem(name, "", "campaigns", "no list of campaigns",
                                                      "write `campaigns:` followed by a list of campaigns"))  # fmt: skip
                continue
            entries.extend((name, item) for item in raw["campaigns"])
            continue
        if not isinstance(raw, dict):
            found.problems.append(CampaignProblem(name, _stem(name), "", "the file is not a mapping of fields",
                                                  "write one `field: value` per line (docs/campaigns.md)"))  # fmt: skip
            continue
        if raw.get("campaign_id") not in (None, _stem(name)):
            found.problems.append(CampaignProblem(
                name, str(raw.get("campaign_id")), "campaign_id",
                f"the file is named {name} but says campaign_id {raw.get('campaign_id')!r}",
                f"rename the file to {raw.get('campaign_id')}.yaml or drop campaign_id (the file name is the id)",
            ))  # fmt: skip
            continue
        entries.append((name, {"campaign_id": _stem(name), **raw}))

    counts: dict[str, int] = {}
    for _, raw in entries:
        if isinstance(raw, dict):
            counts[str(raw.get("campaign_id"))] = counts.get(str(raw.get("campaign_id")), 0) + 1
    for name, raw in entries:
        campaign_id = str(raw.get("campaign_id", "")) if isinstance(raw, dict) else ""
        if counts.get(campaign_id, 0) > 1:
            found.problems.append(CampaignProblem(name, campaign_id, "campaign_id", "the id appears twice",
                                                  "give each campaign its own id"))  # fmt: skip
            continue
        try:
            campaign = Campaign.model_validate(raw, context={"limits": limits})
        except ValidationError as error:
            found.problems.extend(_problems(name, campaign_id, error))
            continue
        found.campaigns.append(campaign)
        found.files[campaign.campaign_id] = name
    return found


def load_campaigns(path: str | Path, limits: CampaignLimits | None = None) -> list[Campaign]:
    """All campaigns under `path`, strictly: raises CampaignError listing every problem if there is one."""
    found = read_campaigns(path, limits)
    if found.problems:
        raise CampaignError(f"campaigns in {path} have errors: " + "; ".join(str(p) for p in found.problems))
    return found.campaigns


def active_campaigns(path: str | Path, ds: str) -> list[Campaign]:
    """The campaigns under `path` running on `ds` (strict: any problem raises CampaignError)."""
    day = dt.date.fromisoformat(ds)
    return [c for c in load_campaigns(path) if c.is_active(day)]


# --- the campaigns of one run, copied into the run's folder ------------------------------------------------


def _snapshot_index_key(ds: str) -> str:
    from pmg_tasks.layout import run_key

    return run_key(ds, "campaigns/index.json")


def _snapshot_file_key(ds: str, name: str) -> str:
    from pmg_tasks.layout import run_key

    return run_key(ds, f"campaigns/files/{name}")


def snapshot_campaigns(
    settings: Settings, ds: str, only: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Copy the campaign files in force into runs/ds=<ds>/campaigns/ (the files as written, broken ones too,
    and an index of what validated), so the night can be explained after the files change. Every stage of
    the run reads the copy. Logs each broken campaign. Returns the index.

    `only` keeps one campaign (a run of one campaign now), written with `overrides` (field -> value)
    applied: the copy is what the run used. Raises CampaignError when that campaign is broken or not
    running on `ds`."""
    from pmg_tasks.store import open_store, write_json

    store = open_store(settings)
    path = Path(settings.campaigns_file)
    layout: Literal["folder", "file"] = "file" if path.is_file() else "folder"
    names = ([path.name] if layout == "file" else
             sorted(p.name for p in path.iterdir() if p.is_file() and p.suffix in CAMPAIGN_SUFFIXES)
             if path.is_dir() else [])  # fmt: skip
    files = {name: (path if layout == "file" else path / name).read_bytes() for name in names}
    found = read_campaigns(path, settings.campaign_limits)
    if only is not None:
        layout, files, found = _one_campaign(found, only, overrides or {}, ds, settings)
    store.delete_prefix(_snapshot_file_key(ds, ""))
    for name, data in files.items():
        store.put_bytes(_snapshot_file_key(ds, name), data)
    index = {
        "source": str(path), "layout": layout, "files": sorted(files),
        "valid": sorted(c.campaign_id for c in found.campaigns),
        "active": [c.campaign_id for c in found.active(ds)],
        "review": sorted(c.campaign_id for c in found.active(ds) if c.review == "required"),
        "problems": found.problem_records(),
    }  # fmt: skip
    write_json(store, _snapshot_index_key(ds), index)
    for problem in found.problems:
        log.warning("skipping a broken campaign: %s", problem)
    return index


def _one_campaign(
    found: CampaignSet, campaign_id: str, overrides: dict[str, Any], ds: str, settings: Settings
) -> tuple[Literal["folder"], dict[str, bytes], CampaignSet]:
    import yaml

    campaign = found.by_id(campaign_id)
    fields = {**campaign.model_dump(mode="json", exclude_defaults=True), **overrides}
    if fields.get("candidates") is not None and fields["candidates"] < fields.get("variants", 1):
        # More variants than candidates cannot be chosen: more variants bring as many candidates along.
        fields["candidates"] = fields["variants"]
    try:
        changed = Campaign.model_validate(fields, context={"limits": settings.campaign_limits})
    except ValidationError as error:
        raise CampaignError("; ".join(str(p) for p in _problems(f"{campaign_id}.yaml", campaign_id, error))) from None
    if not changed.is_active(dt.date.fromisoformat(ds)):
        raise CampaignError(
            f"campaign {campaign_id!r} runs from {changed.start_date} to {changed.end_date}, not on {ds}: pick a "
            "date in its window"
        )
    text = yaml.safe_dump(changed.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
    name = f"{campaign_id}.yaml"
    return "folder", {name: text.encode()}, CampaignSet(found.source, [changed], [], {campaign_id: name})


def campaigns_for_run(settings: Settings, ds: str, store: ObjectStore | None = None) -> CampaignSet:
    """The campaigns of run `ds`: the run's copy where the DAG took one (its first task does), else the
    campaigns folder itself (a stage run on its own)."""
    from pmg_tasks.store import open_store, read_json

    store = store or open_store(settings)
    if not store.exists(_snapshot_index_key(ds)):
        return read_campaigns(settings.campaigns_file, settings.campaign_limits)
    index = read_json(store, _snapshot_index_key(ds))
    texts = [(name, store.get_bytes(_snapshot_file_key(ds, name)).decode(errors="replace")) for name in index["files"]]
    found = parse_campaigns(index["source"], texts, index["layout"], settings.campaign_limits)
    if not texts and index["problems"]:
        found.problems = [CampaignProblem(**p) for p in index["problems"]]
    return found


# --- helpers ----------------------------------------------------------------------------------------------


def _problems(name: str, campaign_id: str, error: ValidationError) -> Iterable[CampaignProblem]:
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        top = str(item["loc"][0]) if item["loc"] else ""
        message = item["msg"].removeprefix("Value error, ")
        fix = FIELD_FIXES.get(top) or ERROR_FIXES.get(item["type"]) or _fix_from_message(message)
        yield CampaignProblem(name, campaign_id, where, message, fix)


def _fix_from_message(message: str) -> str:
    # Our own validators say the fix in their message; pydantic's bounds say the bound.
    if ":" in message and "(" not in message.split(":")[-1]:
        return message.split(":")[-1].strip()
    return "change the value as the message says"


def _stem(name: str) -> str:
    return Path(name).stem


def _first_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _attributes(value: object) -> dict:
    if isinstance(value, dict):
        return value
    if isinstance(value, str | bytes) and value:
        try:
            parsed = json.loads(value)
        except (TypeError, ValueError):
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}
