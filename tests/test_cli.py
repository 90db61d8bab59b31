"""The `pmg` command: seeding and the model builder, called as a user calls them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pmg_tasks.campaigns import load_campaigns
from pmg_tasks.cli import main
from pmg_tasks.warehouse import connect


def test_demo_seed_fills_the_warehouse_and_writes_campaigns(settings, monkeypatch, capsys):
    monkeypatch.setenv("PMG_HOME", str(settings.home))
    assert main(["demo", "seed", "--ds", "2026-11-20", "--users", "30", "--items", "20", "--days", "3"]) == 0
    with connect(settings) as warehouse:
        counts = warehouse.fetch_frame(
            "SELECT (SELECT count(*) FROM events) AS events, (SELECT count(*) FROM items) AS items"
        ).iloc[0]
    assert counts["items"] == 20 and counts["events"] > 0
    campaigns = load_campaigns(settings.campaigns_file)
    assert {c.campaign_id for c in campaigns} == {"winter-classics", "sci-fi-weekend"}

    # Seeding again replaces rather than appends.
    main(["demo", "seed", "--ds", "2026-11-20", "--users", "30", "--items", "20", "--days", "3"])
    with connect(settings) as warehouse:
        again = warehouse.fetch_frame("SELECT count(*) AS n FROM events")["n"].iloc[0]
    assert again == counts["events"]


def test_models_build_test_size_prints_the_settings_to_use(tmp_path):
    out = tmp_path / "models"
    result = subprocess.run(
        [sys.executable, "-m", "pmg_tasks.cli", "models", "build-test-size", "--out", str(out)],
        capture_output=True, text=True, check=True,
    )
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines() if line.startswith("PMG_MODELS__"))
    assert set(lines) == {"PMG_MODELS__DIFFUSION", "PMG_MODELS__CLIP", "PMG_MODELS__LLM"}
    assert (Path(lines["PMG_MODELS__DIFFUSION"]) / "model_index.json").exists()
    assert (Path(lines["PMG_MODELS__CLIP"]) / "config.json").exists()
    assert (Path(lines["PMG_MODELS__LLM"]) / "config.json").exists()


def test_settings_command_prints_pmg_variables(capsys):
    assert main(["settings"]) == 0
    assert "PMG_WAREHOUSE_URL=" in capsys.readouterr().out
