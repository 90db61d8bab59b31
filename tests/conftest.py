"""Shared fixtures: settings rooted in a temp folder, a seeded embedded warehouse, real servers on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Airflow reads its home at import: point it at a throwaway folder before any test imports it,
# so the suite never writes to ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"pmg-test-airflow-{os.getpid()}"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from pmg_tasks.settings import Settings  # noqa: E402

# The tiny models every role needs, built once per session (tests/fixtures_models.py).
pytest_plugins = ["tests.fixtures_models"]

DS = "2026-11-20"


# Whole nights under a real executor, the fault drills and the browser runs take most of an hour on two
# cores; the default run stays a few minutes and keeps one real end-to-end night (tests/dags/test_nightly_run.py
# and the retail run). `make test-nights` (PMG_TEST_NIGHTS=1) runs them all.
NIGHTS_WANTED = os.environ.get("PMG_TEST_NIGHTS", "") == "1"


def pytest_collection_modifyitems(config, items):
    if NIGHTS_WANTED:
        return
    skip = pytest.mark.skip(reason="a whole night (Celery, S3 with faults, drills, browser): `make test-nights` runs it")
    for item in items:
        if item.get_closest_marker("night"):
            item.add_marker(skip)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded defaults under a fresh folder: DuckDB warehouse, local object store."""
    return Settings(home=tmp_path / "pmg")


@pytest.fixture
def seeded_settings(settings: Settings) -> Settings:
    """A small synthetic shop (60 users, 40 items, 7 days ending at DS) in the embedded warehouse."""
    from pmg_tasks.cli import seed_demo

    seed_demo(settings, DS, users=60, items=40, days=7, overwrite_campaigns=True)
    return settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API server (moto in server mode) on loopback, started and ended by this fixture."""
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if moto is None:
        pytest.skip("moto_server is not installed: run `make setup`")
    port = free_port()
    process = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail("moto_server did not start listening within 30 s")
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in credentials}
    os.environ.update(credentials)
    try:
        yield url
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def run_date() -> str:
    return DS

