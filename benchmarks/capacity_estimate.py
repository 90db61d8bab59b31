"""`pmg plan --estimate` on a synthetic warehouse of a million users and three campaigns.

    .venv/bin/python -m benchmarks.capacity_estimate                   # 1,000,000 users, 8 GPUs
    .venv/bin/python -m benchmarks.capacity_estimate --users 10000000 --out /tmp/x.json

1. The warehouse: a DuckDB file (cached under .pmg/bench/, gitignored) with `--users` users, each with
   `--events-per-user` events over 8 days (7 in the window), 20,000 items in 4 categories, generated in SQL.
   Three campaigns: everyone (segment personalization, 3 targets), Sci-Fi/Action fans (segment, 2 targets,
   2 variants), and the 50,000 most engaged (per-user personalization, 1 target).
2. In a child process each (so peak RSS is its own): the bare floor, `COUNT(DISTINCT user_id)` over the
   window, then the estimate itself (estimate_night), with the production profile and `--gpus` workers.
   Reported: seconds, peak RSS, the ratio of the two, and the estimate's own figures.

Target (issue 13): 1M users x 3 campaigns in under a minute and 4 GB. Not a test: nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "capacity_estimate.json"
CACHE = REPO / ".pmg" / "bench"
DS = "2026-11-20"
ITEMS = 20_000
GENERATOR_VERSION = 1


def home_for(users: int, events_per_user: int) -> Path:
    return CACHE / f"capacity-{users}-{events_per_user}-v{GENERATOR_VERSION}"


def ensure_warehouse(users: int, events_per_user: int) -> Path:
    """A pmg home with the synthetic warehouse and campaigns file (generated when missing)."""
    import duckdb

    home = home_for(users, events_per_user)
    done = home / ".complete"
    if done.exists():
        return home
    home.mkdir(parents=True, exist_ok=True)
    path = home / "warehouse.duckdb"
    path.unlink(missing_ok=True)
    started = time.monotonic()
    total = users * events_per_user
    first = dt.datetime.fromisoformat(DS) - dt.timedelta(days=7)  # a day before the 7-day window
    step_us = 8 * 86_400_000_000 // total
    print(f"generating {total:,} events of {users:,} users into {path} ...", flush=True)
    con = duckdb.connect(str(path))
    con.execute((REPO / "sql" / "ddl.sql").read_text())
    con.execute(f"""
        INSERT INTO items
        SELECT 'm' || lpad(CAST(i AS VARCHAR), 6, '0'), 'Item ' || i,
               (['Drama', 'Comedy', 'Action', 'Sci-Fi'])[1 + i % 4], 'A film.', '{{}}', NULL, TIMESTAMP '2026-01-01'
        FROM range({ITEMS}) AS t(i)
    """)
    con.execute(f"""
        INSERT INTO events
        SELECT 'e' || CAST(i AS VARCHAR), 'u' || lpad(CAST(hash(i, 1) % {users} AS VARCHAR), 8, '0'),
               'm' || lpad(CAST(hash(i, 2) % {ITEMS} AS VARCHAR), 6, '0'), 's' || CAST(i // 6 AS VARCHAR),
               (['view', 'view', 'click', 'purchase'])[1 + CAST(hash(i, 3) % 4 AS INTEGER)],
               $first + to_microseconds(CAST(i * {step_us} AS BIGINT)), 30.0
        FROM range({total}) AS t(i)
    """, {"first": first})  # fmt: skip
    con.close()
    (home / "campaigns.yaml").write_text("""\
campaigns:
  - {campaign_id: everyone, start_date: 2026-11-01, end_date: 2026-12-31, target_items: [m000001, m000002, m000003]}
  - {campaign_id: sci-fi-fans, start_date: 2026-11-01, end_date: 2026-12-31, target_items: [m000003, m000007],
      variants: 2, audience: {categories: [Sci-Fi, Action]}}
  - {campaign_id: top-fans, start_date: 2026-11-01, end_date: 2026-12-31, target_items: [m000011],
      personalization: user, audience: {max_users: 50000}}
""")
    done.touch()
    print(f"generated in {time.monotonic() - started:.0f} s", flush=True)
    return home


def child(kind: str, home: str, gpus: int, images_per_s: float | None) -> dict:
    os.environ.update({"PMG_HOME": home, "PMG_PROFILE": "production"})
    from pmg_tasks.settings import Settings

    settings = Settings()
    started = time.monotonic()
    if kind == "bare":
        import duckdb

        from pmg_tasks.extraction_window import extraction_window

        start, end = extraction_window(DS, settings.lookback_days)
        con = duckdb.connect(str(Path(home) / "warehouse.duckdb"), read_only=True)
        users = con.execute("SELECT COUNT(DISTINCT user_id) FROM events WHERE event_ts >= $s AND event_ts < $e",
                            {"s": start, "e": end}).fetchone()[0]
        figures = {"window_users": users}
    else:
        from pmg_tasks.plan.estimate import estimate_night, format_estimate, read_throughput

        night = estimate_night(settings, DS, gpus, read_throughput(images_per_s=images_per_s))
        figures = night.to_dict()
        figures["printed"] = format_estimate(night)
    seconds = time.monotonic() - started
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            **figures}  # fmt: skip


def measure(kind: str, home: Path, gpus: int, images_per_s: float | None) -> dict:
    args = [sys.executable, "-m", "benchmarks.capacity_estimate", "--child", kind, "--home", str(home),
            "--gpus", str(gpus)] + (["--images-per-s", str(images_per_s)] if images_per_s else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True, cwd=REPO).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events-per-user", type=int, default=6)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--images-per-s", type=float, help="a given GPU throughput (else benchmarks/results/)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child")
    parser.add_argument("--home")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.home, args.gpus, args.images_per_s)))
        return 0

    home = ensure_warehouse(args.users, args.events_per_user)
    bare = measure("bare", home, args.gpus, args.images_per_s)
    estimate = measure("estimate", home, args.gpus, args.images_per_s)
    printed = estimate.pop("printed")
    print(printed)
    print(f"\nestimate: {estimate['seconds']} s, peak RSS {estimate['peak_rss_mb']} MB; bare COUNT(DISTINCT "
          f"user_id): {bare['seconds']} s ({estimate['seconds'] / max(bare['seconds'], 1e-9):.1f}x)")
    report = {
        "command": "python -m benchmarks.capacity_estimate " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average": os.getloadavg()},
        "users": args.users, "events": args.users * args.events_per_user, "campaigns": 3, "gpus": args.gpus,
        "bare_count_distinct": bare, "estimate": estimate, "printed": printed.splitlines(),
        "estimate_over_bare": round(estimate["seconds"] / max(bare["seconds"], 1e-9), 2),
        "targets": {"seconds": 60, "peak_rss_mb": 4096},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
