"""The creatives gallery: a small web app over the object store, for the people who look at the output.

Served inside the Airflow API server by plugins/pmg_gallery.py (at /pmg), behind Airflow's own login: every
route depends on Airflow's authenticated user (docs/campaigns.md says how). For a quick look on a laptop,
without Airflow: `uvicorn --factory pmg_tasks.gallery:create_local_app --port 8081` (no login: loopback only).

    /                        run dates: published or not, a link to each report and campaign
    /browse?ds=&campaign=    a campaign's creatives, sorted by z (best or worst first), a page at a time
    /creative?ds=&campaign=&creative_id=   one creative: prompt, scores, and the users, histories and tokens behind it
    /store/<key>             reports and creative images, read-only; nothing else of the store

A campaign of 100,000 creatives opens as fast as one of 10: its manifest is read once (the columns a page
shows) and kept until the date is published again; a page is a slice of it.
"""

from __future__ import annotations

import html
import re
import threading
from typing import TYPE_CHECKING

from pmg_tasks.layout import manifest_key, report_key, run_key, success_key
from pmg_tasks.store import ObjectStore, open_store, read_json

if TYPE_CHECKING:
    import pandas as pd
    from fastapi import FastAPI

    from pmg_tasks.settings import Settings

# What the gallery may serve: reports and creatives. Runs, caches, manifests and models stay private.
SERVABLE = re.compile(r"^(reports/ds=\d{4}-\d{2}-\d{2}/index\.html|creatives/ds=\d{4}-\d{2}-\d{2}/campaign=[a-z0-9_-]+/[0-9a-f]+\.png)$")
RUN_DATE = re.compile(r"^reports/ds=(\d{4}-\d{2}-\d{2})/index\.html$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
CAMPAIGN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
CREATIVE = re.compile(r"^[0-9a-f]{8,64}$")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png"}
PAGE_SIZE = 24
MAX_USERS_SHOWN = 20
BROWSE_COLUMNS = ["user_id", "item_id", "creative_id", "image_key", "segment_id", "d_p", "d_t", "consistency", "z",
                  "headline"]  # fmt: skip
STYLE = (
    "body{font:14px system-ui,sans-serif;margin:2rem;color:#222}td,th{padding:.3rem 1rem;text-align:left}"
    ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:1rem}"
    ".card{border:1px solid #ddd;border-radius:6px;padding:.5rem;background:#fafafa}"
    ".card img,.big{width:100%;image-rendering:pixelated;background:#eee}.big{max-width:384px}"
    "nav a{margin-right:1rem}pre{white-space:pre-wrap;background:#f4f4f4;padding:.5rem}"
)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{STYLE}</style></head><body><nav><a href='./'>all runs</a></nav><h1>{_e(title)}</h1>{body}"
        "</body></html>"
    )


def published_dates(store: ObjectStore) -> list[str]:
    """Dates with a report, newest first."""
    dates = [m.group(1) for k in store.list_keys("reports/") if (m := RUN_DATE.match(k))]
    return sorted(dates, reverse=True)


def published_campaigns(store: ObjectStore, ds: str) -> list[str]:
    """The campaigns of `ds` with a published manifest."""
    return sorted(
        key.split("/campaign=", 1)[1].split("/", 1)[0]
        for key in store.list_keys(f"manifests/ds={ds}/")
        if key.endswith("/manifest.parquet")
    )


def index_page(store: ObjectStore) -> str:
    rows = []
    for ds in published_dates(store):
        status = "published" if store.exists(success_key(ds)) else "incomplete"
        rows_count = read_json(store, success_key(ds)).get("rows", "?") if status == "published" else "–"
        campaigns = " ".join(
            f"<a href='browse?ds={ds}&amp;campaign={_e(c)}'>{_e(c)}</a>" for c in published_campaigns(store, ds)
        )
        rows.append(
            f"<tr><td><a href='store/{_e(report_key(ds))}'>{ds}</a></td>"
            f"<td>{status}</td><td>{rows_count}</td><td>{campaigns or '–'}</td></tr>"
        )
    body = "".join(rows) or "<tr><td colspan='4'>No run has published a report yet.</td></tr>"
    return _page("pmg creatives", "<table><tr><th>run date (report)</th><th>status</th><th>creatives</th>"
                 f"<th>browse a campaign</th></tr>{body}</table>")  # fmt: skip


class ManifestCache:
    """Each campaign's distinct creatives, best z first, read once per publication of its date."""

    def __init__(self, store: ObjectStore, size: int = 16):
        self.store, self.size = store, size
        self._frames: dict[tuple[str, bytes], pd.DataFrame] = {}
        self._lock = threading.Lock()

    def creatives(self, ds: str, campaign_id: str) -> pd.DataFrame:
        key = manifest_key(ds, campaign_id)
        # The marker is rewritten whenever the date is published: its bytes say whether the cache is current.
        version = self.store.get_bytes(success_key(ds)) if self.store.exists(success_key(ds)) else b""
        with self._lock:
            cached = self._frames.get((key, version))
        if cached is not None:
            return cached
        from pmg_tasks.store import read_table

        rows = read_table(self.store, key).select(BROWSE_COLUMNS).to_pandas()
        frame = (
            rows.groupby("creative_id", sort=False)
            .agg(image_key=("image_key", "first"), z=("z", "max"), d_p=("d_p", "mean"), d_t=("d_t", "first"),
                 consistency=("consistency", "first"), users=("user_id", "nunique"), item_id=("item_id", "first"),
                 segment=("segment_id", "first"), headline=("headline", "first"))
            .reset_index()
            .sort_values(["z", "creative_id"], ascending=[False, True], ignore_index=True)
        )  # fmt: skip
        with self._lock:
            if len(self._frames) >= self.size:
                self._frames.pop(next(iter(self._frames)))
            self._frames[(key, version)] = frame
        return frame


def browse_page(store: ObjectStore, cache: ManifestCache, ds: str, campaign_id: str, page: int, order: str) -> str:
    creatives = cache.creatives(ds, campaign_id)
    if order == "worst":
        creatives = creatives.iloc[::-1]
    pages = max(1, -(-len(creatives) // PAGE_SIZE))
    page = min(max(page, 1), pages)
    shown = creatives.iloc[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    cards = "".join(
        f"<div class='card' data-z='{row.z:.4f}'><a href='creative?ds={ds}&amp;campaign={_e(campaign_id)}&amp;"
        f"creative_id={_e(row.creative_id)}'><img src='store/{_e(row.image_key)}' alt='{_e(row.headline)}'></a>"
        f"<br><b>{_e(row.headline)}</b><br><span class='z'>z={row.z:.3f}</span> d_p={row.d_p:.3f} "
        f"d_t={row.d_t:.3f} c={row.consistency:.3f}<br>{_e(row.item_id)} · {row.users} users</div>"
        for row in shown.itertuples(index=False)
    )
    link = f"browse?ds={ds}&amp;campaign={_e(campaign_id)}&amp;order={order}&amp;page="
    pager = (
        (f"<a rel='prev' href='{link}{page - 1}'>previous</a> " if page > 1 else "")
        + f"page {page} of {pages} ({len(creatives)} creatives)"
        + (f" <a rel='next' href='{link}{page + 1}'>next</a>" if page < pages else "")
    )
    other = "worst" if order == "best" else "best"
    body = (
        f"{_picker(store, ds, campaign_id)}<p>sorted by z, {order} first · "
        f"<a href='browse?ds={ds}&amp;campaign={_e(campaign_id)}&amp;order={other}'>{other} first</a> · "
        f"<a href='store/{_e(report_key(ds))}#campaign-{_e(campaign_id)}'>report</a></p>"
        f"<p class='pager'>{pager}</p><div class='grid'>{cards}</div><p class='pager'>{pager}</p>"
    )
    return _page(f"{campaign_id} — {ds}", body)


def _picker(store: ObjectStore, ds: str, campaign_id: str) -> str:
    """Pick a date and a campaign (a plain GET form)."""
    dates = "".join(f"<option{' selected' if d == ds else ''}>{d}</option>" for d in published_dates(store))
    campaigns = "".join(f"<option{' selected' if c == campaign_id else ''}>{_e(c)}</option>"
                        for c in published_campaigns(store, ds))  # fmt: skip
    return (
        f"<form action='browse' method='get'><label>date <select name='ds'>{dates}</select></label> "
        f"<label>campaign <select name='campaign'>{campaigns}</select></label> <button>show</button></form>"
    )


def creative_page(store: ObjectStore, ds: str, campaign_id: str, creative_id: str) -> str | None:
    """One creative: its image, prompt and scores, and each user who got it with their history and tokens."""
    from pmg_tasks.store import read_frame, read_table

    table = read_table(store, manifest_key(ds, campaign_id))
    import pyarrow.compute as pc

    rows = table.filter(pc.equal(table["creative_id"], creative_id)).to_pandas()
    if rows.empty:
        return None
    first = rows.iloc[0]
    histories_key = run_key(ds, "histories.parquet")
    users = rows["user_id"].drop_duplicates().head(MAX_USERS_SHOWN)
    history = (
        read_frame(store, histories_key).set_index("user_id")["history_text"].reindex(users).fillna("")
        if store.exists(histories_key) else {}
    )  # fmt: skip
    people = "".join(
        f"<tr><td>{_e(r.user_id)}</td><td>{r.rank}</td><td>{r.z:.3f}</td><td>{r.d_p:.3f}</td>"
        f"<td>{_e(' '.join(r.preference_tokens))}</td><td>{_e(', '.join(r.preference_keywords))}</td>"
        f"<td><pre>{_e(history.get(r.user_id, '') if len(history) else '')}</pre></td></tr>"
        for r in rows[rows["user_id"].isin(users)].itertuples(index=False)
    )
    body = (
        f"<img class='big' src='store/{_e(first.image_key)}' alt='{_e(first.headline)}'>"
        f"<h2>{_e(first.headline)}</h2><p>item {_e(first.item_id)} · segment {_e(first.segment_id or '–')} · "
        f"d_t={first.d_t:.3f} · consistency={first.consistency:.3f} · {rows['user_id'].nunique()} users</p>"
        f"<h3>Prompt</h3><pre class='prompt'>{_e(first.prompt)}</pre><h3>Negative prompt</h3>"
        f"<pre>{_e(first.negative_prompt)}</pre><p>target keywords: {_e(', '.join(first.target_keywords))}</p>"
        f"<h3>Who got it</h3><table class='users'><tr><th>user</th><th>rank</th><th>z</th><th>d_p</th><th>tokens</th>"
        f"<th>keywords</th><th>history</th></tr>{people}</table>"
    )
    return _page(f"creative {creative_id}", body)


def create_app(settings: Settings | None = None, airflow_auth: bool = True) -> FastAPI:
    """The gallery app. `airflow_auth`: every route needs a user Airflow has authenticated (a JWT in the
    Authorization header, or the UI's session cookie); the plugin serves it this way."""
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, Response

    from pmg_tasks.settings import Settings

    store = open_store(settings or Settings())
    cache = ManifestCache(store)
    dependencies = []
    if airflow_auth:
        from airflow.api_fastapi.core_api.security import get_user

        dependencies.append(Depends(get_user))
    app = FastAPI(title="pmg creatives", docs_url=None, redoc_url=None, openapi_url=None, dependencies=dependencies)

    def checked(ds: str, campaign: str) -> None:
        if not DATE.match(ds) or not CAMPAIGN.match(campaign) or not store.exists(manifest_key(ds, campaign)):
            raise HTTPException(status_code=404, detail="no published campaign of that name on that date")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return index_page(store)

    @app.get("/browse", response_class=HTMLResponse)
    def browse(ds: str, campaign: str, page: int = 1, order: str = "best") -> str:
        checked(ds, campaign)
        return browse_page(store, cache, ds, campaign, page, "worst" if order == "worst" else "best")

    @app.get("/creative", response_class=HTMLResponse)
    def creative(ds: str, campaign: str, creative_id: str) -> str:
        checked(ds, campaign)
        page = creative_page(store, ds, campaign, creative_id) if CREATIVE.match(creative_id) else None
        if page is None:
            raise HTTPException(status_code=404, detail="no such creative in that campaign")
        return page

    @app.get("/store/{key:path}")
    def stored_object(key: str) -> Response:
        # Relative links in the report (../../creatives/...) resolve under /store/ too.
        if not SERVABLE.match(key):
            raise HTTPException(status_code=404, detail="not a report or a creative")
        try:
            data = store.get_bytes(key)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"no object {key}") from None
        suffix = key[key.rfind(".") :]
        return Response(content=data, media_type=CONTENT_TYPES[suffix])

    return app


def create_local_app() -> FastAPI:
    """The gallery without Airflow's login, for a look on a laptop (bind it to 127.0.0.1)."""
    return create_app(airflow_auth=False)
