from __future__ import annotations

import pytest
from pydantic import ValidationError

from pmg_tasks.settings import Settings


def test_defaults_are_embedded_and_rooted_in_home(tmp_path):
    settings = Settings(home=tmp_path)
    assert settings.warehouse_url == f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    assert settings.store_root == str(tmp_path / "store")
    assert settings.campaigns_file == str(tmp_path / "campaigns.yaml")


def test_environment_variables_with_nested_fields(monkeypatch, tmp_path):
    monkeypatch.setenv("PMG_HOME", str(tmp_path))
    monkeypatch.setenv("PMG_STORE_ROOT", "s3://bucket/prefix")
    monkeypatch.setenv("PMG_MODELS__DIFFUSION", "/models/sd")
    monkeypatch.setenv("PMG_GENERATION__CANDIDATES_PER_REQUEST", "4")
    settings = Settings()
    assert settings.store_root == "s3://bucket/prefix"
    assert settings.models.diffusion == "/models/sd"
    assert settings.generation.candidates_per_request == 4


def test_to_env_round_trips(monkeypatch, tmp_path):
    original = Settings(home=tmp_path, history_length=3, models={"clip": "/m/clip"})
    for name, value in original.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings() == original


def test_bad_values_name_the_field():
    with pytest.raises(ValidationError, match="max_bad_fraction"):
        Settings(max_bad_fraction=2)
