"""The tiny models every role needs, built once per test session (loaded as a pytest plugin by conftest)."""

from __future__ import annotations

import pytest

from pmg_tasks.settings import ModelPaths


@pytest.fixture(scope="session")
def test_size_models(tmp_path_factory: pytest.TempPathFactory) -> ModelPaths:
    """Test-size diffusion, CLIP and LLM directories, as `pmg models build-test-size` writes them."""
    from pmg_tasks.models import build_test_size_models

    return build_test_size_models(tmp_path_factory.mktemp("models"))
