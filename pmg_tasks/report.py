"""The run report: one self-contained HTML page per date (reports/ds=<ds>/index.html), for the people who
did not run the DAG. It opens in a browser from a folder, a bucket or the gallery, with no server behind it:
styles and plots are inline; images are linked relative to the page (which resolves in a folder and under
the gallery's /pmg/store/), or by pre-signed URLs for a private bucket opened elsewhere.

    summary strip   events in, quarantined (by rule), users, keyword cache hit rate, segments, requested
                    creatives vs distinct generations, published, blocked by safety, each stage's wall time
    plots           d_p, d_t, z and consistency per campaign; quarantine by rule; generations per segment
    per campaign    its review state, a capped grid (best and worst by z, and a sample) with headline,
                    tokens, keywords and scores; a link to its manifest
    the run         settings profile, model versions, campaigns skipped and why

Everything from the data is escaped: a title is text, never markup. A figure a stage did not have is a dash.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from pmg_tasks.store import ObjectStore

# Per campaign: the manifest has every creative, the page what a person can look at.
BEST, WORST, SAMPLE = 8, 4, 4
MAX_FIGURES = BEST + WORST + SAMPLE

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#222;max-width:1280px}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}h3{font-size:1rem}
.strip{display:flex;flex-wrap:wrap;gap:.6rem;margin:1rem 0}
.tile{border:1px solid #ddd;border-radius:6px;padding:.4rem .7rem;background:#fafafa;min-width:8rem}
.tile b{display:block;font-size:1.2rem}.tile span{font-size:12px;color:#555}
.plots{display:flex;flex-wrap:wrap;gap:1rem}.plots img{max-width:100%;border:1px solid #eee}
table.stats{border-collapse:collapse}table.stats td,table.stats th{padding:.2rem .8rem;border-bottom:1px solid #eee;text-align:left}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:1rem}
figure{margin:0;border:1px solid #ddd;border-radius:6px;padding:.5rem;background:#fafafa}
figure img{width:100%;image-rendering:pixelated;border-radius:4px;background:#eee}
figcaption{font-size:12px;color:#444;word-wrap:break-word}.z{font-weight:600}.why{font-size:11px;color:#777}
.state{display:inline-block;padding:.1rem .5rem;border-radius:4px;background:#e8f0e8}.state.held{background:#fdf0d0}
.state.rejected{background:#f8d8d8}.problem{color:#a00}
"""


@dataclass
class ReportInputs:
    """What the page shows besides the manifest: the stages' own figures and the run's facts."""

    stats: dict = field(default_factory=dict)
    wall_times: dict = field(default_factory=dict)
    profile: str = ""
    # campaign id -> (state, detail): published, held (waiting for review), rejected (with the comment).
    states: dict[str, tuple[str, str]] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    manifest_links: dict[str, str] = field(default_factory=dict)
    image_link: object = None  # image key -> href; default: relative to the page


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _measured(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))


def _value(value: object) -> str:
    if not _measured(value):
        return "—"  # a figure a stage did not have: a dash, never "None" or "nan"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def relative_link(key: str) -> str:
    """reports/ds=X/index.html -> ../../creatives/ds=X/...: works in a folder, a static bucket and the gallery."""
    return "../../" + key


def summary_figures(stats: Mapping, wall_times: Mapping) -> list[tuple[str, str]]:
    """(figure, label) tiles of the summary strip, in reading order."""
    validation, keywords = stats.get("validation", {}), stats.get("keywords", {})
    plan, manifest = stats.get("plan", {}), stats.get("manifest", {})
    safety = manifest.get("safety") or {}
    by_rule = {rule: n for rule, n in (validation.get("by_rule") or {}).items() if n}
    hits = keywords.get("cache_hits", 0) or 0
    asked = hits + (keywords.get("cache_misses", 0) or 0)
    tiles = [
        (_value(validation.get("extracted")), "events in"),
        (_value(validation.get("quarantined")),
         "quarantined: " + (", ".join(f"{rule} {n}" for rule, n in sorted(by_rule.items())) or "none")),
        (_value(stats.get("histories", {}).get("users")), "users with a history"),
        (f"{hits / asked:.0%}" if asked else "—", f"keyword cache hit rate ({hits} of {asked})"),
        (_value(plan.get("segments")), "segments"),
        (f"{_value(plan.get('requested_creatives'))} / {_value(plan.get('generations'))}",
         "requested creatives / distinct generations"),
        (_value(manifest.get("published_rows", manifest.get("rows"))), "creatives published"),
        (_value(safety.get("blocked_requests")), f"requests blocked by safety ({_value(safety.get('blocked_users'))} users)"),
    ]  # fmt: skip
    for stage, times in wall_times.items():
        label = f"{stage} wall time" + (f" ({times['tasks']} tasks, longest {times['longest']:.1f} s)"
                                        if times["tasks"] > 1 else "")  # fmt: skip
        tiles.append((f"{times['seconds']:.1f} s", label))
    return tiles


def _strip(tiles: Sequence[tuple[str, str]]) -> str:
    return "<div class='strip'>" + "".join(
        f"<div class='tile'><b>{_e(figure)}</b><span>{_e(label)}</span></div>" for figure, label in tiles
    ) + "</div>"


# --- plots ------------------------------------------------------------------------------------------------


def _svg_image(figure, title: str) -> str:
    """The figure as an inline SVG image (a data URI: self-contained, and its ids cannot collide with
    another plot's); closes the figure."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f"<img class='plot' src='data:image/svg+xml;base64,{data}' alt='{_e(title)}' title='{_e(title)}'>"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    # Stable ids, so the same run writes the same page.
    matplotlib.rcParams.update({"svg.hashsalt": "pmg-report", "svg.fonttype": "none", "font.size": 9})
    import matplotlib.pyplot as plt

    return plt


def score_plot(campaign_id: str, rows: pd.DataFrame) -> str:
    """Distributions of d_p, d_t, z and consistency over the campaign's manifest rows."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 4, figsize=(10, 2.2))
    for axis, column in zip(axes, ("d_p", "d_t", "z", "consistency"), strict=True):
        values = rows[column].dropna().to_numpy()
        axis.hist(values, bins=min(20, max(3, len(values) // 2)), color="#4a7bb7")
        axis.set_title(column)
        axis.tick_params(labelsize=7)
    figure.suptitle(f"scores of {campaign_id} ({len(rows)} creatives)", fontsize=9, y=1.08)
    return _svg_image(figure, f"score distributions of {campaign_id}")


def quarantine_plot(by_rule: Mapping[str, int]) -> str:
    plt = _pyplot()
    counted = sorted(((rule, n) for rule, n in by_rule.items() if n), key=lambda pair: -pair[1])
    figure, axis = plt.subplots(figsize=(4.5, 0.5 + 0.3 * max(1, len(counted))))
    if counted:
        axis.barh([rule for rule, _ in counted], [n for _, n in counted], color="#c0504d")
        axis.invert_yaxis()
    else:
        axis.text(0.5, 0.5, "no event quarantined", ha="center", va="center")
        axis.set_yticks([])
    axis.set_title("quarantined events by rule")
    return _svg_image(figure, "quarantined events by rule")


def segment_plot(generations: pd.DataFrame) -> str:
    """How many distinct generations each segment took, per campaign (the cost of sharing)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 2.4))
    if len(generations):
        counts = generations.groupby(["campaign_id", "segment_id"]).size()
        for campaign_id, per_segment in counts.groupby(level=0):
            axis.hist(per_segment.to_numpy(), bins=range(1, int(per_segment.max()) + 2), alpha=0.6,
                      label=str(campaign_id), align="left")  # fmt: skip
        axis.legend(fontsize=7)
        axis.xaxis.get_major_locator().set_params(integer=True)
    axis.set_xlabel("generations per segment")
    axis.set_ylabel("segments")
    axis.set_title("generations per segment")
    return _svg_image(figure, "generations per segment")


# --- the campaigns ----------------------------------------------------------------------------------------


def distinct_creatives(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per creative of a campaign: its scores (best z and mean d_p over the users who got it), how
    many users got it, and what it was made of; best z first."""
    return (
        rows.sort_values(["z", "creative_id"], ascending=[False, True])
        .groupby("creative_id", sort=False)
        .agg(image_key=("image_key", "first"), z=("z", "max"), d_p=("d_p", "mean"), d_t=("d_t", "first"),
             consistency=("consistency", "first"), users=("user_id", "nunique"), item_id=("item_id", "first"),
             headline=("headline", "first"), prompt=("prompt", "first"), segment=("segment_id", "first"),
             tokens=("preference_tokens", "first"), target_keywords=("target_keywords", "first"),
             preference_keywords=("preference_keywords", "first"))
        .reset_index()
        .sort_values(["z", "creative_id"], ascending=[False, True], ignore_index=True)
    )  # fmt: skip


def pick_creatives(creatives: pd.DataFrame, campaign_id: str) -> list[tuple[str, pd.Series]]:
    """The best BEST and worst WORST by z, and SAMPLE more drawn evenly from the middle (the same every
    time), each with why it is shown."""
    if len(creatives) <= MAX_FIGURES:
        return [("best" if i < len(creatives) / 2 else "worst", row) for i, row in creatives.iterrows()]
    best = list(range(BEST))
    worst = list(range(len(creatives) - WORST, len(creatives)))
    middle = list(range(BEST, len(creatives) - WORST))
    step = len(middle) / SAMPLE
    sample = [middle[int(step * i + step / 2)] for i in range(SAMPLE)]
    chosen = [("best", i) for i in best] + [("sample", i) for i in sample] + [("worst", i) for i in worst]
    return [(why, creatives.iloc[i]) for why, i in chosen]


def _words(value: object) -> str:
    if value is None or isinstance(value, float):
        return ""
    return ", ".join(str(v) for v in value)


def _figure(why: str, row: pd.Series, href: str) -> str:
    return (
        f"<figure class='creative' data-z='{row.z:.4f}'><img src='{_e(href)}' alt='{_e(row.headline)}' "
        f"loading='lazy'><figcaption><span class='why'>{why} by z</span><br><b>{_e(row.headline)}</b><br>"
        f"{_e(row.item_id)} · {row.users} users · segment {_e(row.segment or '–')}<br>"
        f"<span class='z'>z={row.z:.3f}</span> d_p={row.d_p:.3f} d_t={row.d_t:.3f} c={row.consistency:.3f}<br>"
        f"tokens: {_e(' '.join(row.tokens) if row.tokens is not None else '') or '–'}<br>"
        f"keywords: {_e(_words(row.target_keywords)) or '–'} | taste: {_e(_words(row.preference_keywords)) or '–'}"
        f"<br><span class='why'>{_e(row.prompt)}</span></figcaption></figure>"
    )


def campaign_section(campaign_id: str, rows: pd.DataFrame, inputs: ReportInputs) -> str:
    creatives = distinct_creatives(rows)
    link = inputs.image_link or relative_link
    figures = [_figure(why, row, link(row.image_key)) for why, row in pick_creatives(creatives, campaign_id)]
    state, detail = inputs.states.get(campaign_id, ("published", ""))
    css = {"published": "", "held": " held", "rejected": " rejected"}.get(state, "")
    manifest = inputs.manifest_links.get(campaign_id)
    shown = f"{len(figures)} of {len(creatives)} images shown" if len(creatives) > len(figures) else "all images shown"
    return (
        f"<section id='campaign-{_e(campaign_id)}' data-campaign='{_e(campaign_id)}'>"
        f"<h2>Campaign {_e(campaign_id)}: {len(rows)} creatives for {rows['user_id'].nunique()} users from "
        f"{len(creatives)} images</h2><p><span class='state{css}'>{_e(state)}</span> {_e(detail)} · {shown}"
        + (f" · <a href='{_e(manifest)}'>full manifest</a>" if manifest and state == "published" else "")
        + f"</p><div class='plots'>{score_plot(campaign_id, rows)}</div><div class='grid'>{''.join(figures)}</div>"
        "</section>"
    )


def _skipped(skipped: Sequence[Mapping]) -> str:
    if not skipped:
        return ""
    items = "".join(
        f"<li class='problem'>{_e(p.get('file', ''))}: campaign {_e(p.get('campaign_id') or '?')}"
        f"{': ' + _e(p['field']) if p.get('field') else ''}: {_e(p.get('message', ''))} "
        f"(fix: {_e(p.get('fix', ''))})</li>"
        for p in skipped
    )
    return f"<h2>Campaigns skipped</h2><ul>{items}</ul>"


def _run_facts(manifest: pd.DataFrame, inputs: ReportInputs) -> str:
    versions = []
    for column, label in (("diffusion_model", "diffusion"), ("clip_model", "scorer"), ("token_embeddings", "tokens")):
        if column in manifest.columns and len(manifest):
            versions.append(f"{label}: " + ", ".join(sorted(set(manifest[column].astype(str)))))
    return (
        f"<h2>The run</h2><p>settings profile: <b>{_e(inputs.profile or '—')}</b>; model versions: "
        f"{_e('; '.join(versions) or '—')}</p>"
    )


def _stats_table(stats: dict) -> str:
    """One row per stage: its scalar figures, and the non-zero entries of its count tables."""
    rows = []
    for stage, values in stats.items():
        if not isinstance(values, dict):
            continue
        parts = [f"{k}: {_value(v)}" for k, v in values.items() if _measured(v) and not isinstance(v, dict | list)]
        for name, inner in values.items():
            if isinstance(inner, dict) and inner and all(isinstance(v, int | float) for v in inner.values()):
                nonzero = {k: v for k, v in inner.items() if v and _measured(v)}
                parts.append(f"{name}: " + (", ".join(f"{k}={_value(v)}" for k, v in nonzero.items()) or "none"))
        rows.append(f"<tr><th>{_e(stage)}</th><td>{_e('; '.join(parts))}</td></tr>")
    return "<table class='stats'>" + "".join(rows) + "</table>"


def _safety_summary(stats: dict) -> str:
    safety = stats.get("manifest", {}).get("safety")
    if not safety:
        return ""
    flagged = ", ".join(f"{_e(reason)}: {count}" for reason, count in safety["flagged"].items()) or "none"
    return (
        f"<p class='summary'>Image safety: flagged candidates {flagged}; {safety['replaced_users']} users given "
        f"their next best; {safety['blocked_requests']} requests ({safety['blocked_users']} users) blocked.</p>"
    )


def _validation_summary(stats: dict) -> str:
    """What validation set aside that a data engineer must hear about even on a night that passed: exact
    redeliveries, and events in the warehouse that no run's window will ever hold."""
    validation = stats.get("validation")
    if not validation:
        return ""
    parts = []
    if validation.get("exact_duplicates"):
        parts.append(
            f"{validation['exact_duplicates']} exact copies of events (redeliveries) were quarantined"
            + (" and not counted toward the bad-data threshold" if validation.get("exact_duplicates_exempt") else "")
        )
    outside = validation.get("events_outside_windows") or {}
    if outside.get("total"):
        parts.append(
            f"the warehouse holds {outside['total']} events that no run will ever process: "
            f"{outside['before_floor']} dated before {_e(outside['floor'][:10])}, {outside['after_ceiling']} after "
            f"{_e(outside['ceiling'][:16].replace('T', ' '))} UTC, {outside['undated']} without a date"
        )
    elif outside:
        parts.append("every event in the warehouse is dated within a plausible window")
    return f"<p class='summary'>Validation: {'; '.join(parts)}.</p>" if parts else ""


def render_report(
    ds: str, manifest: pd.DataFrame, stats: dict, inputs: ReportInputs | None = None,
    generations: pd.DataFrame | None = None,
) -> str:
    """The page at reports/ds=<ds>/index.html for every campaign in `manifest` (published or held)."""
    inputs = inputs or ReportInputs(stats=stats)
    sections = [campaign_section(str(c), rows, inputs) for c, rows in manifest.groupby("campaign_id", sort=True)]
    if not sections:
        sections.append("<p>No active campaign planned any creative for this date.</p>")
    plan = stats.get("plan", {})
    ratio = plan.get("creatives_per_generation")
    plots = quarantine_plot(stats.get("validation", {}).get("by_rule") or {})
    if generations is not None:
        plots += segment_plot(generations)
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>pmg run {_e(ds)}</title>"
        f"<style>{STYLE}</style></head><body><h1>pmg nightly run — {_e(ds)}</h1>"
        f"{_strip(summary_figures(stats, inputs.wall_times))}"
        f"<p class='summary'>{_value(plan.get('requested_creatives'))} creatives requested for "
        f"{_value(plan.get('users'))} users from {_value(plan.get('generations'))} distinct generations"
        + (f" ({ratio:.1f} creatives per generation)" if _measured(ratio) else "") + ".</p>"
        f"{_safety_summary(stats)}{_validation_summary(stats)}<div class='plots'>{plots}</div>{_skipped(inputs.skipped)}"
        f"{''.join(sections)}{_run_facts(manifest, inputs)}<h2>Stages</h2>{_stats_table(stats)}</body></html>"
    )


def presigned_links(store: ObjectStore, seconds: int):
    """Image key -> a pre-signed GET URL, for a report opened straight from a private bucket."""
    client, bucket = store.client, store.bucket

    def link(key: str) -> str:
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": store._key(key)}, ExpiresIn=seconds
        )

    return link


def write_report(
    settings, store: ObjectStore, ds: str, manifest: pd.DataFrame, stats: dict, published: Sequence[str]
) -> str:
    """Render and store the page of `ds` for every campaign in `manifest` (the assembled one, held campaigns
    included: a reviewer looks at them here), each with its state; returns the report's key."""
    from pmg_tasks.layout import manifest_key, report_key, review_key, run_key
    from pmg_tasks.stage_times import wall_times
    from pmg_tasks.store import LocalStore, read_frame, read_json

    skipped = list(stats.get("plan", {}).get("skipped_campaigns") or [])
    states = {}
    for campaign_id in sorted(set(manifest["campaign_id"])):
        if campaign_id in published:
            states[campaign_id] = ("published", "")
        elif store.exists(review_key(ds, campaign_id)):
            decision = read_json(store, review_key(ds, campaign_id))
            states[campaign_id] = (decision["state"], f"by {decision.get('reviewer') or 'a reviewer'}"
                                   + (f": {decision['comment']}" if decision.get("comment") else ""))  # fmt: skip
        else:
            states[campaign_id] = ("held", "waiting for review before it is published")
    bucket = not isinstance(store, LocalStore)
    image_link = presigned_links(store, settings.report.presign_seconds) if (
        bucket and settings.report.image_links == "presigned") else None  # fmt: skip
    links = {c: (relative_link(manifest_key(ds, c)) if image_link is None else image_link(manifest_key(ds, c)))
             for c in states}  # fmt: skip
    generations_key = run_key(ds, "generations.parquet")
    generations = read_frame(store, generations_key) if store.exists(generations_key) else None
    inputs = ReportInputs(
        stats=stats, wall_times=wall_times(store, ds), profile=settings.profile, states=states, skipped=skipped,
        manifest_links=links, image_link=image_link,
    )  # fmt: skip
    store.put_bytes(report_key(ds), render_report(ds, manifest, stats, inputs, generations).encode())
    return report_key(ds)
