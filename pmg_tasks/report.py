"""The run report: one HTML page per date, for the people who did not run the DAG.

Marketing ops see the pictures that came out, per campaign; data engineers see what each stage counted.
Everything from the data is escaped: a title is text, never markup.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

# Per campaign; the manifest has every creative, the report shows what a person can look at.
MAX_FIGURES = 48

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#222;max-width:1200px}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table.stats{border-collapse:collapse}table.stats td,table.stats th{padding:.2rem .8rem;border-bottom:1px solid #eee;text-align:left}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:1rem}
figure{margin:0;border:1px solid #ddd;border-radius:6px;padding:.5rem;background:#fafafa}
figure img{width:100%;image-rendering:pixelated;border-radius:4px;background:#eee}
figcaption{font-size:12px;color:#444;word-wrap:break-word}.z{font-weight:600}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _measured(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))


def _value(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "—"  # a figure a stage did not have: a dash, never "None" or "nan"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _stats_table(stats: dict) -> str:
    """One row per stage: its scalar figures, and the non-zero entries of its count tables."""
    rows = []
    for stage, values in stats.items():
        # A figure a stage could not measure (None) is left out rather than printed as "None".
        parts = [f"{k}: {_value(v)}" for k, v in values.items() if _measured(v) and not isinstance(v, dict | list)]
        for name, inner in values.items():
            if isinstance(inner, dict) and all(isinstance(v, int | float) for v in inner.values()):
                nonzero = {k: v for k, v in inner.items() if v and _measured(v)}
                parts.append(f"{name}: " + (", ".join(f"{k}={_value(v)}" for k, v in nonzero.items()) or "none"))
        rows.append(f"<tr><th>{_e(stage)}</th><td>{_e('; '.join(parts))}</td></tr>")
    return "<table class='stats'>" + "".join(rows) + "</table>"


def _plan_summary(stats: dict) -> str:
    plan = stats.get("plan")
    if not plan:
        return ""
    ratio = plan.get("creatives_per_generation")
    return (
        f"<p class='summary'>{plan.get('requested_creatives', 0)} creatives requested for "
        f"{plan.get('users', 0)} users from {plan.get('generations', 0)} distinct generations"
        + (f" ({ratio:.1f} creatives per generation)" if ratio else "")
        + f"; {plan.get('dropped_keywords', 0)} keywords dropped to fit the text encoder.</p>"
    )


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


def render_report(ds: str, manifest: pd.DataFrame, stats: dict, per_campaign: int = MAX_FIGURES) -> str:
    """The page at reports/ds=<ds>/index.html; images are linked relative to it. Each distinct creative is
    shown once per campaign, with how many users it went to, best z first, at most `per_campaign`."""
    sections = []
    for campaign_id, rows in manifest.groupby("campaign_id", sort=True):
        creatives = (
            rows.sort_values(["z", "creative_id"], ascending=[False, True])
            .groupby("creative_id", sort=False)
            .agg(image_key=("image_key", "first"), z=("z", "max"), d_t=("d_t", "first"),
                 consistency=("consistency", "first"), users=("user_id", "nunique"), item_id=("item_id", "first"),
                 headline=("headline", "first"), prompt=("prompt", "first"), segment=("segment_id", "first"))
            .sort_values(["z"], ascending=False)
        )  # fmt: skip
        figures = []
        for row in creatives.head(per_campaign).itertuples(index=False):
            # reports/ds=X/index.html -> ../../creatives/ds=X/... works on a folder and on a static bucket.
            src = "../../" + row.image_key
            figures.append(
                f"<figure><img src='{_e(src)}' alt='{_e(row.headline)}' loading='lazy'>"
                f"<figcaption><b>{_e(row.headline)}</b><br>{_e(row.item_id)} · {row.users} users · "
                f"segment {_e(row.segment or '–')}<br><span class='z'>best z={row.z:.3f}</span> "
                f"d_t={row.d_t:.3f} c={row.consistency:.3f}<br>{_e(row.prompt)}</figcaption></figure>"
            )
        shown = f" (best {per_campaign} shown)" if len(creatives) > per_campaign else ""
        sections.append(
            f"<h2>Campaign {_e(campaign_id)}: {len(rows)} creatives for {rows['user_id'].nunique()} users from "
            f"{len(creatives)} images{shown}</h2><div class='grid'>{''.join(figures)}</div>"
        )
    if not sections:
        sections.append("<p>No active campaign planned any creative for this date.</p>")
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>pmg run {_e(ds)}</title>"
        f"<style>{STYLE}</style></head><body><h1>pmg nightly run — {_e(ds)}</h1>{_plan_summary(stats)}"
        f"{_safety_summary(stats)}{_validation_summary(stats)}"
        f"<h2>Stages</h2>{_stats_table(stats)}{''.join(sections)}</body></html>"
    )
