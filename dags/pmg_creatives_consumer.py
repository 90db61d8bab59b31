"""pmg_creatives_consumer: an example of a recommender team's DAG, run whenever pmg publishes creatives.

Scheduled on the Asset `pmg_creative_manifests`: each publish event carries in its `extra` the run date, the
manifest URIs and counts. The task reads that night's manifest through `pmg_tasks.consumers.load_manifest`
(which refuses a date without `_SUCCESS`) and logs what it got; a real consumer would load it into its
feature store or cache here.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, dag, task

CREATIVE_MANIFESTS = Asset(name="pmg_creative_manifests")


@dag(
    dag_id="pmg_creatives_consumer",
    schedule=[CREATIVE_MANIFESTS],
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    tags=["pmg", "example", "consumer"],
    doc_md=__doc__,
    default_args={"owner": "recommender", "retries": 2, "retry_delay": dt.timedelta(minutes=2),
                  "execution_timeout": dt.timedelta(minutes=30)},  # fmt: skip
)
def pmg_creatives_consumer():
    @task
    def read_published_creatives(**context) -> dict:
        """The events that triggered this run, each read back as a manifest."""
        import logging

        from pmg_tasks.consumers import load_manifest

        log = logging.getLogger("pmg_creatives_consumer")
        seen = {}
        for event in context["triggering_asset_events"][CREATIVE_MANIFESTS]:
            extra = event.extra or {}
            rows = load_manifest(extra["ds"])
            seen[extra["ds"]] = len(rows)
            log.info(
                "pmg published %s: %d rows (event said %s), %d users, %d creatives, campaigns %s, complete %s; "
                "best for the first user: %s", extra["ds"], len(rows), extra.get("rows"), rows["user_id"].nunique(),
                rows["creative_id"].nunique(), sorted(extra.get("manifests", {})), rows.attrs["complete"],
                rows.loc[rows["rank"] == 1, ["user_id", "item_id", "image_uri"]].head(1).to_dict("records"),
            )  # fmt: skip
        return seen

    read_published_creatives()


pmg_creatives_consumer()
