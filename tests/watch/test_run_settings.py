"""runs/ds=.../settings.json: the run's settings, secrets masked; a worker that differs is stopped."""

from __future__ import annotations

import pytest

from pmg_tasks.settings import Settings
from pmg_tasks.store import open_store, read_json
from pmg_tasks.watch.run_settings import (
    SettingsMismatch,
    check_run_settings,
    mask_secrets,
    write_run_settings,
)


def test_settings_are_recorded_with_secrets_masked(tmp_path):
    settings = Settings(home=tmp_path, warehouse_url="postgresql://pmg:s3cret-pw@db:5432/shop?sslmode=require")
    store = open_store(settings)
    key = write_run_settings(store, settings, "2026-11-20")
    text = store.get_bytes(key).decode()
    assert "s3cret-pw" not in text
    assert read_json(store, key)["warehouse_url"] == "postgresql://pmg:***@db:5432/shop?sslmode=require"


def test_a_worker_with_other_output_settings_is_told_which(tmp_path):
    settings = Settings(home=tmp_path)
    store = open_store(settings)
    write_run_settings(store, settings, "2026-11-20")
    check_run_settings(store, settings, "2026-11-20")
    # Concurrency, timeouts and alerting change how a night runs, not what it writes.
    check_run_settings(store, settings.model_copy(update={"preferences": settings.preferences.model_copy(update={"torch_threads": 4})}), "2026-11-20")
    other = settings.model_copy(update={"generation": settings.generation.model_copy(update={"image_size": 128})})
    with pytest.raises(SettingsMismatch, match=r"generation.image_size: run has 64, this worker 128"):
        check_run_settings(store, other, "2026-11-20")


def test_a_run_without_recorded_settings_says_what_to_clear(tmp_path):
    settings = Settings(home=tmp_path)
    with pytest.raises(SettingsMismatch, match="run_date"):
        check_run_settings(open_store(settings), settings, "2026-11-20")


def test_masking_covers_urls_and_secret_parameters():
    assert mask_secrets("s3://k:v@h/b https://x/?api_key=abc&x=1") == "s3://k:***@h/b https://x/?api_key=***&x=1"
