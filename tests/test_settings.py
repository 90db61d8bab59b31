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


def test_knobs_are_grouped_the_way_users_think_of_them(tmp_path):
    settings = Settings(home=tmp_path)
    assert settings.preferences.dim == 128 and settings.preferences.token_levels == 2
    assert settings.retries.per_task == 2 and settings.retries.delay_s == 120
    assert not any(name.startswith("gnn_") for name in Settings.model_fields)
    assert "task_retries" not in type(settings.pools).model_fields
    with pytest.raises(ValidationError, match="segment_levels"):
        Settings(home=tmp_path, preferences={"token_levels": 1, "segment_levels": 2})


@pytest.mark.parametrize(
    "variable, value, group, field, expected",
    [
        ("PMG_GNN_DIM", "64", "preferences", "dim", 64),
        ("PMG_GNN_FULL_RETRAIN_WEEKDAY", "-1", "preferences", "full_retrain_weekday", -1),
        ("PMG_TOKEN_CODES", "8", "preferences", "token_codes", 8),
        ("PMG_SEGMENT_LEVELS", "2", "preferences", "segment_levels", 2),
        ("PMG_POOLS__TASK_RETRIES", "0", "retries", "per_task", 0),
        ("PMG_POOLS__RETRY_DELAY_S", "7", "retries", "delay_s", 7),
    ],
)
def test_the_flat_names_of_the_first_release_still_work_and_warn(
    monkeypatch, tmp_path, variable, value, group, field, expected
):
    monkeypatch.setenv(variable, value)
    with pytest.warns(FutureWarning, match=variable):
        settings = Settings(home=tmp_path)
    assert getattr(getattr(settings, group), field) == expected


def test_a_new_name_wins_over_its_deprecated_one(monkeypatch, tmp_path):
    monkeypatch.setenv("PMG_GNN_DIM", "64")
    monkeypatch.setenv("PMG_PREFERENCES__DIM", "32")
    with pytest.warns(FutureWarning):
        assert Settings(home=tmp_path).preferences.dim == 32
    monkeypatch.delenv("PMG_GNN_DIM")
    with pytest.warns(FutureWarning, match="gnn_epochs"):
        assert Settings(home=tmp_path, gnn_epochs=5, preferences={"epochs": 9}).preferences.epochs == 9
    with pytest.warns(FutureWarning):
        assert Settings(home=tmp_path, gnn_epochs=5).preferences.epochs == 5


def test_the_llm_tasks_follow_the_model_onto_the_gpu_queue(tmp_path):
    pools = {"gpu_queue": "gpu", "gpu_slots": 4, "llm_slots": 2}
    assert Settings(home=tmp_path, pools=pools).placement("gpu") == ("pmg_gpu", "gpu", 4, 1)
    assert Settings(home=tmp_path, pools=pools).placement("llm") == ("pmg_llm", "default", 2, 1)
    assert Settings(home=tmp_path, pools=pools, keyword_backend="openai").placement("llm") == ("pmg_llm", "default", 2, 1)
    for backend in ("transformers", "vllm"):
        assert Settings(home=tmp_path, pools=pools, keyword_backend=backend).placement("llm") == ("pmg_gpu", "gpu", 4, 1)


def test_a_vllm_model_split_over_gpus_takes_that_many_gpu_pool_slots(tmp_path):
    pools = {"gpu_queue": "gpu", "gpu_slots": 4}
    split = Settings(home=tmp_path, pools=pools, keyword_backend="vllm", keywords={"tensor_parallel_size": 2})
    assert split.placement("llm") == ("pmg_gpu", "gpu", 2, 2)  # two such tasks fill the four GPUs
    assert split.placement("gpu") == ("pmg_gpu", "gpu", 4, 1)  # diffusion stays one GPU a task
    # transformers loads the model on one device whatever vLLM's setting says
    assert split.model_copy(update={"keyword_backend": "transformers"}).placement("llm") == ("pmg_gpu", "gpu", 4, 1)
    too_wide = Settings(home=tmp_path, pools=pools, keyword_backend="vllm", keywords={"tensor_parallel_size": 8})
    with pytest.raises(ValueError, match="tensor_parallel_size=8 .* 4 slots"):
        too_wide.placement("llm")
    with pytest.raises(ValidationError, match="gpu_slots"):
        Settings(home=tmp_path, pools={"gpu_slots": 0})
