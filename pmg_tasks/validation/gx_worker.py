"""Great Expectations in a process of its own, so its import overlaps with DuckDB's row work.

Importing GX costs about 3 s of Python, and DuckDB holds the GIL while it executes, so a thread cannot
overlap the two; a process can. For a big window, validate_events starts this worker first, does the row
work, writes the GX sample to a Parquet file and hands the worker its path; the worker, GX imported by
then, runs the suite (suite.py) and answers with the report, the same dict the in-process call returns.
Small windows (and processes that have imported GX already) run the suite in-process: starting a worker
would cost more than it saves.

Protocol: one JSON line in on stdin ({"sample": path, "window_start": iso, "window_end": iso, "scope": {}}),
one JSON line out on stdout (the report, or {"error": message}). stderr goes to a file the parent reads
when something fails.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from datetime import datetime

log = logging.getLogger(__name__)


class GxWorker:
    """A running worker; `run` hands it one job, `close` ends it (also when the job was never sent)."""

    def __init__(self) -> None:
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pmg_tasks.validation.gx_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )

    def run(self, sample_path: str, *, window_start: datetime, window_end: datetime, scope: dict) -> dict:
        job = {
            "sample": sample_path,
            "window_start": window_start.isoformat(),
            "window_end": window_end.isoformat(),
            "scope": scope,
        }
        out, _ = self.process.communicate(json.dumps(job) + "\n", timeout=600)
        answer = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": "no answer"}
        if self.process.returncode != 0 or "error" in answer:
            self._stderr.seek(0)
            raise RuntimeError(
                f"GX worker failed: {answer.get('error')}; stderr: {self._stderr.read()[-2000:]}"
            )
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


def main() -> int:
    from pmg_tasks.validation.suite import quiet_gx, run_suite

    quiet_gx()
    import great_expectations  # noqa: F401  (the import is the point: it overlaps with the parent's work)

    quiet_gx()
    import pyarrow.parquet as pq

    from pmg_tasks.warehouse import events_schema

    line = sys.stdin.readline()
    try:
        job = json.loads(line)
        frame = pq.read_table(job["sample"]).cast(events_schema()).to_pandas()
        report = run_suite(
            frame,
            window_start=datetime.fromisoformat(job["window_start"]),
            window_end=datetime.fromisoformat(job["window_end"]),
            scope=job["scope"],
        )
    except Exception as error:  # reported to the parent, which falls back to running GX itself
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
