"""The creatives gallery: a small web app over the object store, for the people who look at the output.

Served inside the Airflow API server by plugins/pmg_gallery.py (at /pmg), or alone for a quick look:
    uvicorn --factory pmg_tasks.gallery:create_app --port 8081
It only ever serves the report and creative prefixes of the store, read-only.
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING

from pmg_tasks.layout import report_key, success_key
from pmg_tasks.store import ObjectStore, open_store, read_json

if TYPE_CHECKING:
    from fastapi import FastAPI

    from pmg_tasks.settings import Settings

# What the gallery may serve: reports and creatives. Runs, caches and models stay private.
SERVABLE = re.compile(r"^(reports/ds=\d{4}-\d{2}-\d{2}/index\.html|creatives/ds=\d{4}-\d{2}-\d{2}/campaign=[a-z0-9_-]+/[0-9a-f]+\.png)$")
RUN_DATE = re.compile(r"^reports/ds=(\d{4}-\d{2}-\d{2})/index\.html$")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png"}


def published_dates(store: ObjectStore) -> list[str]:
    """Dates with a report, newest first."""
    dates = [m.group(1) for k in store.list_keys("reports/") if (m := RUN_DATE.match(k))]
    return sorted(dates, reverse=True)


def index_page(store: ObjectStore) -> str:
    rows = []
    for ds in published_dates(store):
        status = "published" if store.exists(success_key(ds)) else "incomplete"
        rows_count = read_json(store, success_key(ds)).get("rows", "?") if status == "published" else "–"
        rows.append(
            f"<tr><td><a href='store/{html.escape(report_key(ds))}'>{ds}</a></td>"
            f"<td>{status}</td><td>{rows_count}</td></tr>"
        )
    body = "".join(rows) or "<tr><td colspan='3'>No run has published a report yet.</td></tr>"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>pmg creatives</title>"
        "<style>body{font:14px system-ui,sans-serif;margin:2rem}td,th{padding:.3rem 1rem;text-align:left}</style>"
        "</head><body><h1>pmg creatives</h1><table><tr><th>run date</th><th>status</th><th>creatives</th></tr>"
        f"{body}</table></body></html>"
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, Response

    from pmg_tasks.settings import Settings

    store = open_store(settings or Settings())
    app = FastAPI(title="pmg creatives", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return index_page(store)

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
