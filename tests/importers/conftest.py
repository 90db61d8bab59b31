"""Fixtures of the importer tests: a real PostgreSQL (skipped when absent) and the MovieLens folder."""

import os
from pathlib import Path

import pytest

from tests.warehouse.pg_fixtures import postgres_server, postgres_url  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    """The real MovieLens small dataset (research licence: read in place, never copied into the repo).

    PMG_MOVIELENS_DIR, default ../shared/data/movielens-latest-small next to the repository."""
    path = Path(
        os.environ.get("PMG_MOVIELENS_DIR", REPO.parent / "shared" / "data" / "movielens-latest-small")
    )
    if not (path / "ratings.csv").is_file():
        pytest.skip(f"MovieLens is not at {path}; set PMG_MOVIELENS_DIR to run this test")
    return path
