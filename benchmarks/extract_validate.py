"""Extraction + validation speed on ten million synthetic events, next to a bare DuckDB export of the same rows.

    .venv/bin/python -m benchmarks.extract_validate            # prints a table, writes
                                                               # benchmarks/results/extract_validate.json
    .venv/bin/python -m benchmarks.extract_validate --events 1000000 --repeat 3

1. The warehouse: a DuckDB file of synthetic clickstream (9 days, `--events` of them in the 7-day window of
   the run, 20,000 items, ~0.09% broken rows: unknown items, negative dwell, duplicate ids, null-like and
   bidi user ids), generated
   once in SQL and cached under .pmg/bench/ (gitignored).
2. In the same run, each measurement in its own child process (so peak RSS is its own, read from
   getrusage in the child), the interpreter and imports outside the timing:
   - bare export: `COPY (SELECT ... FROM events WHERE <window>) TO 'x.parquet' (FORMAT parquet, COMPRESSION
     zstd)`, DuckDB's defaults otherwise: the floor of "getting the rows out";
   - bare export with pmg's Parquet options (v2 pages, no dictionaries), for reference;
   - the stage: extract_clickstream + validate_events (rules, quarantine, conservation check, the GX suite on
     its sample), exactly what the DAG's two tasks run.
   Seconds are wall time; rows/s are window rows per wall second; cpu is user+system of all threads of the
   measured process (the stage's GX worker process is reported on its own: gx_worker_*). The ratio to the
   bare export is printed for both: on a shared machine wall time swings with the neighbours' load, CPU
   seconds much less.

Targets (issue 3): stage <= 3x the bare export, 10M events in under 20 s on 2 cores, peak RSS under 3 GB.
Not a test: nothing here asserts timings. The machine's load is recorded with the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "extract_validate.json"
CACHE = REPO / ".pmg" / "bench"
DS = "2026-11-20"
LOOKBACK_DAYS = 7
DAYS_STORED = 9  # one day either side of the window, which the window query must skip
ITEMS = 20_000
USERS = 200_000
GENERATOR_VERSION = 2
COLUMNS = "event_id, user_id, item_id, session_id, event_type, event_ts, dwell_seconds"


def window() -> tuple[dt.datetime, dt.datetime]:
    from pmg_tasks.extraction_window import extraction_window

    return extraction_window(DS, LOOKBACK_DAYS)


def warehouse_path(events: int) -> Path:
    return CACHE / f"extract_validate-{events}-v{GENERATOR_VERSION}.duckdb"


def ensure_warehouse(events: int) -> Path:
    """The cached benchmark warehouse with `events` events in the window (generated when missing)."""
    import duckdb

    path = warehouse_path(events)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    total = events * DAYS_STORED // LOOKBACK_DAYS
    first_day = window()[0] - dt.timedelta(days=1)
    step_us = DAYS_STORED * 86_400_000_000 // total
    started = time.monotonic()
    print(f"generating {total:,} events ({events:,} in the window) into {path} ...", flush=True)
    con = duckdb.connect(str(partial))
    con.execute((REPO / "sql" / "ddl.sql").read_text())
    con.execute(
        f"""
        INSERT INTO items
        SELECT 'm' || lpad(CAST(i AS VARCHAR), 6, '0'), 'Item ' || i,
               (['Drama', 'Comedy', 'Action', 'Sci-Fi'])[1 + i % 4], 'A film.', '{{"era": "1990s"}}', NULL,
               TIMESTAMP '2026-01-01'
        FROM range({ITEMS}) AS t(i)
        """
    )
    # Appended in time order, as a clickstream is. Broken rows: an unknown item every 4,999th event, a
    # negative dwell every 5,011th, the previous event's id every 5,003rd, a user id "null" every 7,001st
    # and one with a bidi override (U+202E) every 7,013th.
    con.execute(
        f"""
        INSERT INTO events
        SELECT
            'e' || lpad(CAST(CASE WHEN i % 5003 = 7 THEN i - 1 ELSE i END AS VARCHAR), 10, '0'),
            CASE WHEN i % 7001 = 11 THEN 'null' WHEN i % 7013 = 13 THEN 'u' || chr(8238) || '1'
                 ELSE 'u' || lpad(CAST(hash(i, 1) % {USERS} AS VARCHAR), 7, '0') END,
            CASE WHEN i % 4999 = 3 THEN 'm-deleted' ELSE 'm' || lpad(CAST(hash(i, 2) % {ITEMS} AS VARCHAR), 6, '0') END,
            's' || lpad(CAST(i // 6 AS VARCHAR), 9, '0'),
            (['view', 'view', 'view', 'click', 'click', 'add_to_cart', 'purchase'])[1 + CAST(hash(i, 3) % 7 AS INTEGER)],
            $first + to_microseconds(CAST(i * {step_us} AS BIGINT)),
            CASE WHEN i % 5011 = 5 THEN -1.0 ELSE round((hash(i, 4) % 600000) / 1000.0, 2) END
        FROM range({total}) AS t(i)
        """,
        {"first": first_day},
    )
    con.close()
    partial.rename(path)
    print(f"generated in {time.monotonic() - started:.0f} s", flush=True)
    return path


# -- children ------------------------------------------------------------------------------------------


def child_export(db: Path, out: Path, options: str) -> dict:
    import duckdb

    start, end = window()
    con = duckdb.connect(str(db), read_only=True)
    started, cpu = time.monotonic(), time.process_time()
    rows = con.execute(
        f"COPY (SELECT {COLUMNS} FROM events WHERE event_ts >= $start AND event_ts < $end) "
        f"TO '{out}' ({options})",
        {"start": start, "end": end},
    ).fetchall()[0][0]
    return {"rows": int(rows), "seconds": time.monotonic() - started, "cpu_seconds": time.process_time() - cpu}


def child_stage(db: Path, home: Path) -> dict:
    import logging

    from pmg_tasks.extract import extract_clickstream
    from pmg_tasks.settings import Settings
    from pmg_tasks.validation import validate_events

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    settings = Settings(home=home, warehouse_url=f"duckdb:///{db}", lookback_days=LOOKBACK_DAYS)
    now = window()[1] + dt.timedelta(hours=1)
    started, cpu = time.monotonic(), time.process_time()
    extracted = extract_clickstream(settings, DS)
    middle, middle_cpu = time.monotonic(), time.process_time()
    validated = validate_events(settings, DS, now=now)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the GX worker process
    return {
        "gx_worker_cpu_seconds": children.ru_utime + children.ru_stime,
        "gx_worker_peak_rss_mb": children.ru_maxrss / 1024,
        "rows": extracted["events"],
        "seconds": time.monotonic() - started,
        "cpu_seconds": time.process_time() - cpu,
        "extract_seconds": middle - started,
        "extract_cpu_seconds": middle_cpu - cpu,
        "validate_seconds": time.monotonic() - middle,
        "validate_cpu_seconds": time.process_time() - middle_cpu,
        "valid": validated["valid"],
        "quarantined": validated["quarantined"],
        "conservation": extracted["events"] == validated["valid"] + validated["quarantined"],
    }


def run_child(kind: str, db: Path, work: Path, options: str = "") -> dict:
    command = [sys.executable, "-m", "benchmarks.extract_validate", "--child", kind, "--db", str(db),
               "--work", str(work), "--options", options]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the run -------------------------------------------------------------------------------------------

BARE_DEFAULT = "FORMAT parquet, COMPRESSION zstd"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000, help="events in the run's window")
    parser.add_argument("--repeat", type=int, default=1, help="measurements of each kind (best is reported)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=("export", "stage"), help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--options", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if args.child == "export":
            result = child_export(args.db, args.work / "bare.parquet", args.options)
        else:
            result = child_stage(args.db, args.work)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0

    from pmg_tasks.warehouse import PARQUET_COPY_OPTIONS

    db = ensure_warehouse(args.events)
    kinds = {
        "bare_export": ("export", BARE_DEFAULT),
        "bare_export_pmg_parquet_options": ("export", PARQUET_COPY_OPTIONS),
        "stage": ("stage", ""),
    }
    runs: dict[str, list[dict]] = {name: [] for name in kinds}
    load_before = os.getloadavg()
    for _ in range(args.repeat):
        for name, (kind, options) in kinds.items():
            with tempfile.TemporaryDirectory(prefix="pmg-bench-") as work:
                runs[name].append(run_child(kind, db, Path(work), options))
            print(f"  {name}: {runs[name][-1]['seconds']:.1f} s", flush=True)
    load_after = os.getloadavg()

    best = {name: min(results, key=lambda r: r["seconds"]) for name, results in runs.items()}
    for result in best.values():
        result["rows_per_second"] = result["rows"] / result["seconds"]
    bare, stage = best["bare_export"], best["stage"]
    ratio = stage["seconds"] / bare["seconds"]
    # On a shared machine wall time swings with the neighbours; CPU-seconds (all threads) much less so.
    cpu_ratio = stage["cpu_seconds"] / bare["cpu_seconds"]
    report = {
        "benchmark": "extract_validate",
        "command": "python -m benchmarks.extract_validate" + (f" --events {args.events}" if args.events != 10_000_000 else "")
        + (f" --repeat {args.repeat}" if args.repeat != 1 else ""),
        "measured_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "duckdb": _version("duckdb"),
            "pyarrow": _version("pyarrow"),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
        },
        "events_in_window": bare["rows"],
        "repeat": args.repeat,
        "best": best,
        "all_seconds": {name: [round(r["seconds"], 2) for r in results] for name, results in runs.items()},
        "median_seconds": {name: round(statistics.median(r["seconds"] for r in results), 2) for name, results in runs.items()},
        "stage_over_bare_export": ratio,
        "stage_over_bare_export_cpu": cpu_ratio,
        "stage_over_bare_export_pmg_options": stage["seconds"] / best["bare_export_pmg_parquet_options"]["seconds"],
        "targets": {
            "stage_at_most_3x_bare_export": ratio <= 3.0,
            "stage_at_most_3x_bare_export_cpu": cpu_ratio <= 3.0,
            "stage_under_20_s": stage["seconds"] < 20.0,
            "peak_rss_under_3_gb": stage["peak_rss_mb"] < 3 * 1024,
            "conservation": stage["conservation"],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n{bare['rows']:,} events in the window, best of {args.repeat}; load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(f"{'measurement':34} {'wall s':>8} {'cpu s':>7} {'rows/s':>12} {'peak RSS':>9}")
    for name, result in best.items():
        print(
            f"{name:34} {result['seconds']:8.1f} {result['cpu_seconds']:7.1f} {result['rows_per_second']:12,.0f} "
            f"{result['peak_rss_mb']:7.0f} MB"
        )
    print(
        f"  of which extract {stage['extract_seconds']:.1f} s (cpu {stage['extract_cpu_seconds']:.1f} s), "
        f"validate {stage['validate_seconds']:.1f} s (cpu {stage['validate_cpu_seconds']:.1f} s); "
        f"GX worker process: {stage['gx_worker_cpu_seconds']:.1f} cpu s, {stage['gx_worker_peak_rss_mb']:.0f} MB"
    )
    print(f"stage / bare export: {ratio:.2f}x wall, {cpu_ratio:.2f}x cpu (target <= 3x); "
          f"stage {stage['seconds']:.1f} s (target < 20 s); "
          f"peak {stage['peak_rss_mb']:.0f} MB (target < 3072 MB)")
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")
    return 0


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
