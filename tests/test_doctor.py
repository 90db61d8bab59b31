"""`pmg doctor` on a machine that is ready and on one where every check has something broken."""

from __future__ import annotations

import shutil

import pytest

from pmg_tasks.airflow_run import airflow_env, prepare_airflow
from pmg_tasks.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def ready(seeded_settings, test_size_models, monkeypatch):
    """A seeded warehouse, test-size models and pmg's own Airflow with its pools, all in the environment."""
    settings = seeded_settings.model_copy(update={"models": test_size_models})
    prepare_airflow(settings)
    # Doctor reads the Airflow that `pmg run` uses, not the test session's.
    monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    return settings


def doctor_lines(capsys) -> tuple[int, dict[str, str]]:
    code = main(["doctor"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line[:4] in ("ok  ", "FAIL", "skip")]
    return code, {line[6:].split(":")[0]: line for line in lines}


def test_a_ready_machine_passes_every_check(ready, capsys):
    code, lines = doctor_lines(capsys)
    assert code == 0, lines
    assert {"warehouse", "store", "models.diffusion", "models.clip", "pool pmg_gpu", "pool pmg_llm",
            "queue default", "campaigns", "gpu extra"} <= set(lines)  # fmt: skip
    assert all(not line.startswith("FAIL") for line in lines.values())
    assert ready.home.joinpath("store").is_dir() and not list(ready.home.joinpath("store").glob("_doctor/*"))


def test_each_broken_piece_fails_its_line_with_the_fix(ready, capsys, monkeypatch, tmp_path):
    import subprocess

    from pmg_tasks.warehouse import connect

    with connect(ready) as warehouse:
        warehouse.execute("DROP TABLE items")
    # A copy of the session's CLIP, cut short: the shared test-size models stay whole for other tests.
    clip = tmp_path / "clip"
    shutil.copytree(ready.models.clip, clip)
    weights = sorted(clip.rglob("*.safetensors"))[0]
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    monkeypatch.setenv("PMG_MODELS__CLIP", str(clip))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store should be")
    monkeypatch.setenv("PMG_STORE_ROOT", str(blocker / "store"))
    monkeypatch.setenv("PMG_CAMPAIGNS_FILE", str(tmp_path / "missing.yaml"))
    monkeypatch.setenv("PMG_POOLS__GPU_QUEUE", "gpu")
    env = airflow_env(ready)
    subprocess.run(["airflow", "pools", "delete", ready.pools.gpu], env=env, check=True, capture_output=True)

    code, lines = doctor_lines(capsys)
    assert code == 1
    expected = {
        "warehouse": "has no table items",
        "store": "not-a-folder",
        "models.clip": "is cut short",
        "pool pmg_gpu": "airflow pools set pmg_gpu",
        "queue gpu": "PMG_POOLS__GPU_QUEUE=default",
        "campaigns": "the campaigns folder does not exist",
    }
    for name, words in expected.items():
        assert lines[name].startswith("FAIL") and " -- fix: " in lines[name] and words in lines[name], lines[name]
    assert lines["models.diffusion"].startswith("ok") and lines["pool pmg_llm"].startswith("ok")
