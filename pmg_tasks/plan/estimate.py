"""What a night will cost, before anything runs (`pmg plan --estimate --ds DATE --gpus N`).

From the warehouse (the run's extraction window and the items' categories), the campaigns file and what
the store remembers of earlier nights, without extracting, training or generating anything:

- users per campaign: users with an event in the window whose items touch the campaign's categories, capped
  by `max_users`. An upper bound: the night itself counts only valid events and each user's last
  `history_length` engaged items.
- requested creatives (users x targets x variants) and distinct generations: one per (user, target) for
  `personalization: user`; one per (segment, target) for `segment`, with the segments the latest earlier
  night had (or, before any night, the most the token grid allows), never more than the users.
- shards, cut exactly as the plan stage cuts them (plan.stage.shard_sizes).
- keyword requests after the cache: users whose history can have changed (an event on the day itself) and
  users no earlier night saw; 0 for the catalog backend, which calls no model.
- GPU-hours and wall time for N GPU workers, from measured throughput (benchmarks/results/, or a figure
  given on the command line, which the output says it was).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pmg_tasks import layout
from pmg_tasks.campaigns import Campaign, active_campaigns
from pmg_tasks.extraction_window import extraction_window
from pmg_tasks.plan.stage import shard_sizes

if TYPE_CHECKING:
    from pmg_tasks.settings import Settings

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
# Preference views a token tuple has (text and image, docs/preference_graph.md).
VIEWS = 2


@dataclass(frozen=True)
class Throughput:
    """Measured speeds one GPU worker reaches, and where each figure came from ('' when none is known)."""

    images_per_s: float | None = None
    images_source: str = ""
    keyword_requests_per_s: float | None = None
    keywords_source: str = ""


def read_throughput(results_dir: Path = RESULTS_DIR, images_per_s: float | None = None,
                    keyword_requests_per_s: float | None = None) -> Throughput:
    """GPU throughput from the benchmarks' results (a shard's images/s on a GPU, vLLM requests/s), each
    replaced by a figure given here."""
    def load(name: str) -> dict:
        path = results_dir / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    measured_images = ((load("generation_gpu").get("gpu_figures") or {}).get("shard") or {}).get("images_per_s")
    vllm = load("keywords").get("vllm") or {}
    measured_keywords = vllm.get("requests_per_s") if isinstance(vllm, dict) else None
    return Throughput(
        images_per_s=images_per_s or measured_images,
        images_source="given" if images_per_s else ("benchmarks/results/generation_gpu.json" if measured_images else ""),
        keyword_requests_per_s=keyword_requests_per_s or measured_keywords,
        keywords_source="given" if keyword_requests_per_s else ("benchmarks/results/keywords.json" if measured_keywords else ""),
    )  # fmt: skip


@dataclass
class CampaignEstimate:
    campaign_id: str
    personalization: str
    users: int
    targets: int
    requested_creatives: int
    generations: int
    candidate_images: int


@dataclass
class NightEstimate:
    ds: str
    gpus: int
    window_users: int
    campaigns: list[CampaignEstimate]
    segments: int
    segments_source: str
    generations: int
    shards: int
    generations_per_shard: int
    keyword_requests: int
    keyword_backend: str
    candidate_images: int
    throughput: Throughput
    gpu_hours: float | None = None
    wall_hours: float | None = None
    unknown: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_night(settings: Settings, ds: str, gpus: int, throughput: Throughput) -> NightEstimate:
    """The cost of the night of `ds` on `gpus` GPU workers (see the module docstring)."""
    from pmg_tasks.warehouse import connect

    if gpus < 1:
        raise ValueError(f"--gpus must be at least 1, got {gpus}")
    campaigns = active_campaigns(settings.campaigns_file, ds)
    start, end = extraction_window(ds, settings.lookback_days)
    with connect(settings) as warehouse:
        users = _window_users(warehouse, start, end)
        reached = {c.campaign_id: _campaign_users(warehouse, c, start, end) for c in campaigns}
    segments, segments_source = _segments(settings, ds)

    estimates = []
    for campaign in campaigns:
        audience = reached[campaign.campaign_id]
        per_target = audience if campaign.personalization == "user" else min(audience, segments)
        candidates = max(campaign.candidates or settings.generation.candidates_per_request, campaign.variants)
        generations = per_target * len(campaign.target_items)
        estimates.append(CampaignEstimate(
            campaign_id=campaign.campaign_id, personalization=campaign.personalization, users=audience,
            targets=len(campaign.target_items),
            requested_creatives=audience * len(campaign.target_items) * campaign.variants,
            generations=generations, candidate_images=generations * candidates,
        ))  # fmt: skip
    generations = sum(e.generations for e in estimates)
    per_shard, shards = shard_sizes(generations, settings.generation)
    images = sum(e.candidate_images for e in estimates)
    keyword_requests = 0 if settings.keyword_backend == "catalog" else _changed_users(settings, ds, users)

    night = NightEstimate(
        ds=ds, gpus=gpus, window_users=len(users), campaigns=estimates, segments=segments,
        segments_source=segments_source, generations=generations, shards=shards,
        generations_per_shard=per_shard, keyword_requests=keyword_requests,
        keyword_backend=settings.keyword_backend, candidate_images=images, throughput=throughput,
    )  # fmt: skip
    _gpu_time(night, settings)
    return night


def _gpu_time(night: NightEstimate, settings: Settings) -> None:
    """GPU-hours and wall time, where the throughput behind them is known; else what is missing."""
    throughput = night.throughput
    if throughput.images_per_s is None:
        night.unknown.append("generation: no GPU images/s measured in benchmarks/results/generation_gpu.json; "
                             "give one with --images-per-s")
        return
    images_per_shard = night.candidate_images / night.shards if night.shards else 0.0
    shard_s = images_per_shard / throughput.images_per_s
    gpu_s = night.candidate_images / throughput.images_per_s
    # Shards are of equal size, so N workers finish in ceil(shards / N) rounds.
    wall_s = math.ceil(night.shards / night.gpus) * shard_s
    if settings.keywords_need_gpu and night.keyword_requests:
        if throughput.keyword_requests_per_s is None:
            night.unknown.append("keywords: no vLLM requests/s measured in benchmarks/results/keywords.json; "
                                 "give one with --keyword-requests-per-s")
        else:
            keyword_s = night.keyword_requests / throughput.keyword_requests_per_s
            gpu_s += keyword_s
            wall_s += keyword_s / min(night.gpus, settings.pools.gpu_slots)
    night.gpu_hours = round(gpu_s / 3600, 3)
    night.wall_hours = round(wall_s / 3600, 3)


def _window_users(warehouse, start, end):
    """Users with an event in the window, and whether they had one on the day itself (their history may
    have changed since the last night)."""
    frame = warehouse.fetch_frame(
        "SELECT user_id, MAX(CASE WHEN event_ts >= :day_start THEN 1 ELSE 0 END) AS today FROM events "
        "WHERE event_ts >= :window_start AND event_ts < :window_end GROUP BY user_id",
        {"window_start": start, "window_end": end, "day_start": end - dt.timedelta(days=1)},
    )
    return frame


def _campaign_users(warehouse, campaign: Campaign, start, end) -> int:
    """Users of the window whose items touch the campaign's categories (all users without categories),
    at most max_users."""
    params: dict[str, Any] = {"window_start": start, "window_end": end}
    where = ""
    if campaign.audience.categories:
        # '|'-separated categories (the warehouse's form), matched whole: '|Drama|' is not '|Drama Film|'.
        likes = []
        for i, category in enumerate(campaign.audience.categories):
            params[f"c{i}"] = f"%|{category}|%"
            likes.append(f"('|' || i.categories || '|') LIKE :c{i}")
        where = f" AND ({' OR '.join(likes)})"
    sql = (
        "SELECT COUNT(DISTINCT e.user_id) FROM events e JOIN items i ON i.item_id = e.item_id "
        f"WHERE e.event_ts >= :window_start AND e.event_ts < :window_end{where}"
    )
    count = int(warehouse.fetch_rows(sql, params)[0][0])
    return min(count, campaign.audience.max_users) if campaign.audience.max_users else count


def _latest_earlier_run(settings: Settings, ds: str, name: str) -> str | None:
    """The key of `name` in the latest run before `ds` that wrote it, if any."""
    from pmg_tasks.store import open_store

    store = open_store(settings)
    runs = sorted({key.split("/")[1] for key in store.list_keys("runs/") if key.endswith("/" + name)})
    earlier = [run for run in runs if run.removeprefix("ds=") < ds]
    return layout.run_key(earlier[-1].removeprefix("ds="), name) if earlier else None


def _segments(settings: Settings, ds: str) -> tuple[int, str]:
    """How many segments the night can have: the latest earlier night's count, else the grid's bound."""
    key = _latest_earlier_run(settings, ds, "preference_tokens.parquet")
    if key is not None:
        return len(set(_column(settings, key, "segment_id"))), key
    # Every token tuple of the coarse levels, plus the users no token describes yet.
    bound = settings.preferences.token_codes ** (VIEWS * settings.preferences.segment_levels) + 1
    return bound, f"at most token_codes^(2 x segment_levels) + 1 = {bound} (no earlier night in the store)"


def _changed_users(settings: Settings, ds: str, users) -> int:
    """Users whose keywords the cache cannot serve: an event on the day itself, or unseen by earlier nights."""
    key = _latest_earlier_run(settings, ds, "histories.parquet")
    if key is None:
        return len(users)
    seen = set(_column(settings, key, "user_id"))
    return int((users["today"].astype(bool) | ~users["user_id"].isin(seen)).sum())


def _column(settings: Settings, key: str, name: str) -> list:
    """One column of a stored Parquet file (a night's files are wide; read only what is counted)."""
    import pyarrow.parquet as pq

    from pmg_tasks.store import open_store

    with open_store(settings).reading(key) as path:
        return pq.read_table(path, columns=[name]).column(name).to_pylist()


def format_estimate(night: NightEstimate) -> str:
    """The estimate as a person reads it."""
    lines = [f"pmg plan --estimate for ds={night.ds} on {night.gpus} GPU worker{'s' if night.gpus != 1 else ''}",
             f"  users with events in the window: {night.window_users:,}"]
    for c in night.campaigns:
        lines.append(
            f"  campaign {c.campaign_id} ({c.personalization}): {c.users:,} users x {c.targets} targets -> "
            f"{c.requested_creatives:,} creatives from {c.generations:,} generations ({c.candidate_images:,} images)"
        )
    total = sum(c.requested_creatives for c in night.campaigns)
    lines += [
        f"  requested creatives: {total:,}",
        f"  distinct generations: {night.generations:,} (segments: {night.segments:,}, {night.segments_source})",
        f"  shards: {night.shards:,} of up to {night.generations_per_shard:,} generations",
        f"  candidate images: {night.candidate_images:,}",
        f"  keyword requests after the cache: {night.keyword_requests:,} (backend {night.keyword_backend})",
    ]
    t = night.throughput
    if t.images_per_s is not None:
        lines.append(f"  throughput: {t.images_per_s:g} images/s per GPU ({t.images_source})")
    if night.gpu_hours is not None:
        partial = " (generation only: keyword time unknown)" if any(u.startswith("keywords") for u in night.unknown) else ""
        lines.append(f"  GPU-hours: {night.gpu_hours:,.2f}; wall time on {night.gpus} GPUs: {night.wall_hours:,.2f} h{partial}")
    for missing in night.unknown:
        lines.append(f"  unknown: {missing}")
    return "\n".join(lines)
