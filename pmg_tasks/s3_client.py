"""How pmg reaches S3: one boto3 client, configured for production.

Inside Airflow the client comes from the connection `settings.s3.conn_id` (`aws_default` unless settings
name another) through the Amazon provider's S3Hook, so credentials, region and the `endpoint_url` extra
(MinIO, a loopback test server) live where Airflow keeps connections. Outside Airflow, or where that
connection is not defined, boto3's own credential chain and `settings.s3_endpoint_url` serve.

Either way: botocore retries in adaptive mode (throttling slows the client down instead of failing it), a
connection pool as large as the upload pool, and a count of the retries every response reports, so a task
log says how rough the night was.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pmg_tasks.settings import S3, Settings

log = logging.getLogger(__name__)


class RetryCounter:
    """Requests and retried attempts of one client, by operation (from each response's RetryAttempts)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()

    def __call__(self, http_response=None, parsed=None, model=None, **_) -> None:
        attempts = ((parsed or {}).get("ResponseMetadata") or {}).get("RetryAttempts", 0)
        name = getattr(model, "name", "request")
        with self.lock:
            self.requests[name] += 1
            if attempts:
                self.retries[name] += attempts
        if attempts:
            # Into the task log as it happens: every task, not only those that print a summary.
            status = getattr(http_response, "status_code", "?")
            log.warning("S3 %s answered %s after %d retried attempts", name, status, attempts)

    def summary(self) -> dict:
        with self.lock:
            return {
                "requests": sum(self.requests.values()),
                "retries": sum(self.retries.values()),
                "retries_by_operation": dict(sorted(self.retries.items())),
            }


def botocore_config(options: S3):
    from botocore.config import Config

    return Config(
        retries={"mode": "adaptive", "max_attempts": options.max_attempts},
        max_pool_connections=max(10, options.upload_threads + 4),
        connect_timeout=options.connect_timeout_s,
        read_timeout=options.read_timeout_s,
    )


def s3_client(settings: Settings):
    """(client, where it came from): through the Airflow connection where one is defined, else plain
    settings. A connection the settings name explicitly must exist."""
    options = settings.s3
    connection = airflow_connection(options.conn_id) if options.conn_id else None
    if connection is None and "conn_id" in options.model_fields_set and options.conn_id:
        raise ValueError(
            f"settings name the Airflow connection {options.conn_id!r} for S3 (PMG_S3__CONN_ID), but Airflow "
            "does not define it: add it (with an endpoint_url extra for a non-AWS server) or unset the setting"
        )
    config = botocore_config(options)
    if connection is not None:
        try:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        except ImportError:
            client = _client_from_connection(connection, config)
        else:
            client = S3Hook(aws_conn_id=options.conn_id, config=config).get_conn()
        source = f"Airflow connection {options.conn_id!r}"
    else:
        import boto3

        client = boto3.client(
            "s3", endpoint_url=settings.s3_endpoint_url or None, region_name=options.region or None, config=config
        )
        source = "settings"
    log.info("S3 through %s (endpoint %s)", source, client.meta.endpoint_url)
    return client, source


def count_retries(client) -> RetryCounter:
    counter = RetryCounter()
    client.meta.events.register("after-call.s3", counter)
    return counter


def airflow_connection(conn_id: str):
    """The Airflow connection `conn_id`, or None where Airflow is absent or does not define it."""
    try:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException
    except ImportError:
        return None
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def _client_from_connection(connection, config):
    """The connection read by hand, where the Amazon provider is not installed."""
    import boto3

    extra = connection.extra_dejson
    return boto3.client(
        "s3", endpoint_url=extra.get("endpoint_url") or None, region_name=extra.get("region_name") or None,
        aws_access_key_id=connection.login or None, aws_secret_access_key=connection.password or None,
        config=config,
    )  # fmt: skip
