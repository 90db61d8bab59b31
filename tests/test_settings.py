from __future__ import annotations

import pytest
from pydantic import ValidationError

from pmg_tasks.settings import Settings


def test_defaults_are_embedded_and_rooted_in_home(tmp_path):
    settings = Settings(home=tmp_path)
    assert settings.warehouse_url == f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    assert settings.store_root == str(tmp_path / "store")
    assert settings.campaigns_file == str(tmp_path / "campaigns")


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


def test_the_test_profile_is_the_field_defaults_and_production_fills_a_gpu_night(tmp_path):
    from pmg_tasks.settings import Generation

    assert Settings(home=tmp_path).generation == Generation()
    production = Settings(home=tmp_path, profile="production").generation
    assert (production.image_size, production.inference_steps, production.guidance_scale) == (512, 30, 7.5)
    assert production.candidates_per_request == 4 and production.dtype == "auto"


def test_every_field_stays_overridable_under_a_profile(monkeypatch, tmp_path):
    from pmg_tasks.settings import Generation

    monkeypatch.setenv("PMG_PROFILE", "production")
    monkeypatch.setenv("PMG_GENERATION__INFERENCE_STEPS", "25")
    settings = Settings(home=tmp_path)
    assert (settings.generation.inference_steps, settings.generation.image_size) == (25, 512)
    # An object given in code keeps what it set and takes the profile for the rest.
    given = Settings(home=tmp_path, profile="production", generation=Generation(image_size=1024))
    assert (given.generation.image_size, given.generation.inference_steps) == (1024, 30)
    # And the child processes of a run see the same settings.
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings


def test_an_unknown_profile_names_the_choices():
    with pytest.raises(ValidationError, match="(?s)profile.*'test' or 'production'"):
        Settings(profile="fast")
