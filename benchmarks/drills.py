"""Fault drills as figures: runs tests/drills (real Airflow runs with something broken on purpose) and writes
benchmarks/results/drills.json: per drill, whether it passed and what it counted (duplicates, missing
objects, partial files, leaked secrets, ...).

    python -m benchmarks.drills
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "drills.json"
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="pmg-drills-") as tmp:
        figures_file, junit = Path(tmp) / "figures.json", Path(tmp) / "junit.xml"
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/drills", f"--junitxml={junit}"],
            # The drills are whole nights, which the default test run skips: ask for them.
            cwd=ROOT, env={**os.environ, "PMG_DRILLS_RESULTS": str(figures_file), "PMG_TEST_NIGHTS": "1"},
        )  # fmt: skip
        seconds = time.perf_counter() - started
        figures = json.loads(figures_file.read_text()) if figures_file.exists() else {}
        outcomes = {}
        if junit.exists():
            for case in ET.parse(junit).getroot().iter("testcase"):
                failed = case.find("failure") is not None or case.find("error") is not None
                skipped = case.find("skipped") is not None
                outcomes[case.get("name")] = "failed" if failed else "skipped" if skipped else "passed"
    report = {"seconds": round(seconds, 1), "tests": outcomes, "drills": figures,
              "totals": {name: sum(int(d.get(name, 0)) for d in figures.values() if isinstance(d, dict))
                         for name in ("duplicates", "missing_objects", "partial_files", "leaked_secrets")}}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"{'drill':<40} figures")
    for name, values in sorted(figures.items()):
        print(f"{name:<40} {json.dumps(values, sort_keys=True)}")
    print(f"totals: {report['totals']}; {len(outcomes)} tests in {seconds:.0f} s; written to {RESULTS}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
