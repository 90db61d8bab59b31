"""The settings a run was made with, written once by its first task; every later task checks its worker's.

A night's tasks may run on different workers (CPU and GPU machines). If one of them runs with other
settings than the rest (a different model, image size or campaigns file), its outputs silently disagree
with everyone else's. `runs/ds=<ds>/settings.json` holds the run's effective settings, secrets masked, and
a task whose worker differs in anything that changes output fails with the fields that differ.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pmg_tasks.layout import run_key

if TYPE_CHECKING:
    from pmg_tasks.settings import Settings
    from pmg_tasks.store import ObjectStore

SETTINGS_FILE = "settings.json"
MASK = "***"

# Fields that change how a night runs, never what it writes: concurrency, time limits, retries, where the
# local defaults live, alerting. Everything else must be the same on every worker of a run.
OPERATIONAL_FIELDS = frozenset({
    "home", "pools", "retries", "watching", "preferences.torch_threads", "duckdb_memory_limit", "warehouse_conn_id",
    "keywords.concurrency", "keywords.timeout_s", "keywords.retries", "keywords.backoff_s", "keywords.api_key_env",
    "generation.batch_size", "generation.compile", "generation.checkpoint_requests",
    "keywords.tensor_parallel_size", "keywords.gpu_memory_utilization",
})  # fmt: skip

# user:password@ in any URL, and values of query parameters that name a secret.
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@", re.I)
_SECRET_PARAMETER = re.compile(r"(?P<name>(?:password|passwd|secret|token|api_key|apikey|key)=)(?P<value>[^&\s]+)", re.I)


class SettingsMismatch(RuntimeError):
    """This worker's settings differ from the run's in fields that change output."""


def mask_secrets(text: str) -> str:
    """`text` with the password of every URL and every secret-named query value replaced by ***."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _SECRET_PARAMETER.sub(lambda m: f"{m['name']}{MASK}", text)


def effective_settings(settings: Settings) -> dict[str, Any]:
    """The settings as JSON values, every secret masked."""

    def masked(value):
        if isinstance(value, dict):
            return {name: masked(item) for name, item in value.items()}
        if isinstance(value, list):
            return [masked(item) for item in value]
        return mask_secrets(value) if isinstance(value, str) else value

    return masked(settings.model_dump(mode="json"))


def output_fields(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted field name -> value, for every field that changes output."""
    flat = {}
    for name, value in values.items():
        dotted = f"{prefix}{name}"
        if dotted in OPERATIONAL_FIELDS:
            continue
        if isinstance(value, dict) and value:
            flat.update(output_fields(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def write_run_settings(store: ObjectStore, settings: Settings, ds: str) -> str:
    """Record the run's effective settings (the first task does this)."""
    from pmg_tasks.store import write_json

    return write_json(store, run_key(ds, SETTINGS_FILE), effective_settings(settings))


def check_run_settings(store: ObjectStore, settings: Settings, ds: str) -> None:
    """Raises SettingsMismatch naming every output-changing field where `settings` differ from the run's."""
    from pmg_tasks.store import read_json

    key = run_key(ds, SETTINGS_FILE)
    if not store.exists(key):
        raise SettingsMismatch(
            f"{key} is missing: the run_date task of this run writes it; clear the run from run_date on"
        )
    recorded = output_fields(read_json(store, key))
    here = output_fields(effective_settings(settings))
    differ = sorted(name for name in recorded.keys() | here.keys() if recorded.get(name) != here.get(name))
    if differ:
        shown = "; ".join(f"{name}: run has {recorded.get(name)!r}, this worker {here.get(name)!r}" for name in differ[:8])
        raise SettingsMismatch(
            f"this worker's settings differ from the run's ({key}) in {len(differ)} field(s) that change "
            f"output: {shown}. Give every worker the same PMG_* settings (compare `pmg settings` on each), "
            "or clear the run from run_date on to start it with the new ones"
        )
