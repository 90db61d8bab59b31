"""Airflow plugin: the creatives gallery at /pmg, linked from the Airflow UI's navigation.

Wiring only; the app is pmg_tasks.gallery.create_app.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from pmg_tasks.dag_parts import RunReportLink
from pmg_tasks.gallery import create_app


class PmgGalleryPlugin(AirflowPlugin):
    name = "pmg_gallery"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/pmg", "name": "pmg creatives gallery"}]
    # The publish tasks' "Run report" button (the UI needs the link class registered to show it).
    operator_extra_links = [RunReportLink()]
    external_views = [
        {"name": "Creatives", "href": "pmg/", "destination": "nav", "category": "browse", "url_route": "pmg"}
    ]
