"""`pmg campaigns validate`: every problem, with the file, the field and the fix, and a failing exit."""

from __future__ import annotations

from pmg_tasks.cli import main
from tests.test_campaigns import AUTUMN, WINTER, folder


def test_validate_names_every_problem_and_exits_non_zero(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PMG_HOME", str(tmp_path / "pmg"))
    path = folder(tmp_path, winter=WINTER, big=AUTUMN.replace("image_size: 64", "image_size: 4096"),
                  typo=WINTER.replace("priority: 1", "priorty: 1"), dates=WINTER.replace("2026-11-30", "30/11/2026"))
    assert main(["campaigns", "validate", str(path)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert any(line.startswith("typo.yaml: campaign 'typo': priorty: Extra inputs") and "fix: remove it" in line
               for line in lines)
    assert any(line.startswith("dates.yaml: campaign 'dates': end_date:") and "YYYY-MM-DD" in line for line in lines)
    assert any(line.startswith("big.yaml: campaign 'big':") and "at most 128" in line for line in lines)
    assert "1 valid, 3 problems" in err


def test_validate_passes_a_clean_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PMG_HOME", str(tmp_path / "pmg"))
    monkeypatch.setenv("PMG_CAMPAIGNS_FILE", str(folder(tmp_path, winter=WINTER, autumn=AUTUMN)))
    assert main(["campaigns", "validate"]) == 0
    assert "2 valid, 0 problems" in capsys.readouterr().out
