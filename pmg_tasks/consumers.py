"""For recommender teams: read a published date's manifest, from the local folder or S3 the settings name.

    from pmg_tasks.consumers import load_manifest
    rows = load_manifest("2026-11-20", campaign="winter-classics")

A date is read only once its `_SUCCESS` exists (docs/manifest.md); otherwise the reader refuses, saying why.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from pmg_tasks.layout import success_key
from pmg_tasks.store import open_store, read_json, read_table

if TYPE_CHECKING:
    import pandas as pd

    from pmg_tasks.settings import Settings


class ManifestNotPublished(LookupError):
    """The date (or campaign) asked for has no published manifest; the message says why."""


def load_manifest(ds: str, campaign: str | None = None, settings: Settings | None = None) -> pd.DataFrame:
    """The manifest rows of `ds` (all campaigns, or `campaign`'s), with a `ds` column, as pandas.

    `attrs["complete"]` is False for a partial publish; `attrs["missing_requests"]` then lists the
    (campaign_id, user_id, item_id) without rows. Raises ManifestNotPublished for a date without
    `_SUCCESS` and for a campaign that date did not publish."""
    import pyarrow as pa

    from pmg_tasks import manifest as contract
    from pmg_tasks.settings import Settings

    try:
        ds = dt.date.fromisoformat(ds).isoformat()
    except (TypeError, ValueError):
        raise ValueError(f"a run date looks like YYYY-MM-DD, got {ds!r}") from None
    store = open_store(settings or Settings())
    marker = success_key(ds)
    if not store.exists(marker):
        written = [k for k in store.list_keys(f"manifests/ds={ds}/") if k.endswith("manifest.parquet")]
        why = (
            "manifests exist but publishing has not finished (it is running, or it failed: see the publish task)"
            if written else "nothing was published for that date"
        )  # fmt: skip
        raise ManifestNotPublished(f"{ds} is not published: {store.url(marker)} is absent; {why}")
    success = read_json(store, marker)
    manifests = success["manifests"]
    if campaign is not None and campaign not in manifests:
        raise ManifestNotPublished(
            f"campaign {campaign!r} published no manifest for {ds}; that date has {sorted(manifests)}"
        )
    keys = [manifests[campaign]] if campaign is not None else [manifests[c] for c in sorted(manifests)]
    tables = [read_table(store, key) for key in keys]
    table = pa.concat_tables(tables) if tables else contract.schema().empty_table()
    frame = table.to_pandas()
    frame.insert(0, "ds", ds)
    missing = [r for r in success.get("missing_requests", []) if campaign is None or r["campaign_id"] == campaign]
    frame.attrs.update(complete=not missing, missing_requests=missing)
    return frame
