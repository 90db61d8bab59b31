"""The run report: one HTML page per date, for the people who did not run the DAG.

Marketing ops see the pictures that came out, per campaign; data engineers see what each stage counted.
Everything from the data is escaped: a title is text, never markup.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

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


def _value(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "—"  # a figure a stage did not have: a dash, never "None" or "nan"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _stats_table(stats: dict) -> str:
    """One row per stage: its scalar figures, and the non-zero entries of its count tables."""
    rows = []
    for stage, values in stats.items():
        parts = [f"{k}: {_value(v)}" for k, v in values.items() if not isinstance(v, dict | list)]
        for name, inner in values.items():
            if isinstance(inner, dict) and all(isinstance(v, int | float) for v in inner.values()):
                nonzero = {k: v for k, v in inner.items() if v}
                parts.append(f"{name}: " + (", ".join(f"{k}={_value(v)}" for k, v in nonzero.items()) or "none"))
        rows.append(f"<tr><th>{_e(stage)}</th><td>{_e('; '.join(parts))}</td></tr>")
    return "<table class='stats'>" + "".join(rows) + "</table>"


def render_report(ds: str, manifest: pd.DataFrame, stats: dict) -> str:
    """The page at reports/ds=<ds>/index.html; images are linked relative to it."""
    sections = []
    for campaign_id, rows in manifest.groupby("campaign_id", sort=True):
        figures = []
        for row in rows.itertuples(index=False):
            # reports/ds=X/index.html -> ../../creatives/ds=X/... works on a folder and on a static bucket.
            src = "../../" + row.image_key
            figures.append(
                f"<figure><img src='{_e(src)}' alt='{_e(row.prompt)}' loading='lazy'>"
                f"<figcaption><b>{_e(row.user_id)}</b> × {_e(row.item_id)} (#{_e(row.rank)})<br>"
                f"<span class='z'>z={row.z:.3f}</span> d_p={row.d_p:.3f} d_t={row.d_t:.3f} α={row.alpha:.2f}<br>"
                f"{_e(row.prompt)}</figcaption></figure>"
            )
        sections.append(
            f"<h2>Campaign {_e(campaign_id)}: {len(rows)} creatives for "
            f"{rows['user_id'].nunique()} users</h2><div class='grid'>{''.join(figures)}</div>"
        )
    if not sections:
        sections.append("<p>No active campaign planned any creative for this date.</p>")
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>pmg run {_e(ds)}</title>"
        f"<style>{STYLE}</style></head><body><h1>pmg nightly run — {_e(ds)}</h1>"
        f"<h2>Stages</h2>{_stats_table(stats)}{''.join(sections)}</body></html>"
    )
