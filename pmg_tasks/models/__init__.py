"""Models by role (diffusion, CLIP, LLM): test-size builds and the versions that name them in creative ids."""

from pmg_tasks.models.test_size import build_test_size_models
from pmg_tasks.models.versions import model_version

__all__ = ["build_test_size_models", "model_version"]
