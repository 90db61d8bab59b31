"""Publishing a night into the warehouse: a 1,000,000-row manifest upserted into generated_creatives, on
DuckDB and on PostgreSQL, next to a bare bulk load of the same rows.

    .venv/bin/python -m benchmarks.publish                      # writes benchmarks/results/publish.json
    .venv/bin/python -m benchmarks.publish --rows 200000

A synthetic manifest (campaigns x users x items x ranks, the manifest's own typed schema, headlines and
prompts of realistic length) is built once and written to Parquet; each measurement runs in its own child
process that reads it (what the publish task holds) outside the timing, so the child's peak RSS (getrusage)
is the manifest plus what the load costs. DuckDB runs under `settings.duckdb_memory_limit`, as publish does. Measured, per engine:
- bare load: DuckDB `CREATE TABLE AS SELECT` from the Arrow table; PostgreSQL `COPY` into a table with no
  key or index: the floor of "getting the rows in";
- upsert: `pmg_tasks.creatives_table.upsert_creatives` into an empty table (what a first publish does);
- rerun: the same upsert again, every key already there (what a rerun of the date does).
The ratio is upsert / bare load. Targets (issue 11): DuckDB under 60 s and 2 GB. Not a test.
PostgreSQL: the server at PMG_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres), in a
throwaway database; skipped, saying so, where none answers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "publish.json"
DS = "2026-11-20"


def synthetic_manifest(rows: int):
    """A typed manifest of `rows` rows: 4 campaigns x users x 5 items x 2 ranks. Built as Arrow arrays
    (repeated texts as one Python object each), so the manifest costs what the publish task would hold."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from pmg_tasks import manifest as contract

    i = np.arange(rows)
    item = (i // 2) % 5
    user = (i // 10) % max(1, rows // 40)
    segments = user % 256
    campaign = (i // max(1, rows // 4)).clip(max=3)

    def same(text: str) -> pa.Array:
        return pa.array([text] * rows, pa.string())

    def named(prefix: str, numbers, width: int) -> pa.Array:
        return pa.array([f"{prefix}{n:0{width}d}" for n in numbers.tolist()], pa.string())

    creative = pa.array([f"{(u % 512) * 10 + t:020x}" for u, t in zip(user.tolist(), item.tolist(), strict=True)])
    image_key = pc.binary_join_element_wise("creatives/ds=2026-11-20/campaign=c/", creative, ".png", "")
    columns = {
        "campaign_id": named("campaign-", campaign, 1), "user_id": named("user-", user, 8),
        "item_id": named("item-", item, 6), "rank": pa.array(i % 2 + 1, pa.int64()), "creative_id": creative,
        "image_key": image_key, "image_uri": pc.binary_join_element_wise("s3://bucket/prefix/", image_key, ""),
        "segment_id": named("seg-", segments, 3), "personalization": same("segment"),
        "seed": pa.array(i * 2654435761 % (1 << 62), pa.int64()), "d_p": pa.array(0.5 + (i % 97) / 400),
        "d_t": pa.array(0.6 + (i % 89) / 400), "consistency": pa.array(0.55 + (i % 83) / 400),
        "z": pa.array(-0.6 - (i % 101) / 300), "alpha": pa.array(np.full(rows, 0.5)),
        "consistency_weight": pa.array(np.zeros(rows)),
        "headline": same("Winter classics, picked for a noir taste like yours"),
        "prompt": same("a cinematic movie poster of Casablanca, noir, rain-soaked streets, <pref_txt_0_3> "
                       "<pref_img_0_7>, film grain, dramatic light"),
        "prompt_tokens": pa.array(np.full(rows, 41), pa.int64()), "negative_prompt": same("blurry, text, watermark"),
        "signature": pa.array([f"sig-{s:03d}-{t}" for s, t in zip(segments.tolist(), item.tolist(), strict=True)]),
        "diffusion_model": same("sd15-0123456789ab"), "clip_model": same("clip-vit-0123456789ab"),
        "llm_model": same("qwen2.5-7b-0123456789ab"), "token_embeddings": same("tokens-2026-11-20-0123abcd"),
        "safety": same("passed"),
        "preference_tokens": pa.array([["<pref_txt_0_3>", "<pref_img_0_7>"]] * rows, pa.list_(pa.string())),
        "preference_keywords": pa.array([["noir", "rain", "jazz", "detective"]] * rows, pa.list_(pa.string())),
        "target_keywords": pa.array([["casablanca", "classic", "romance"]] * rows, pa.list_(pa.string())),
    }  # fmt: skip
    schema = contract.schema()
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def measure(engine: str, manifest: str, url: str) -> dict:
    """In a child process: read the manifest (what publish holds), then time bare load, upsert and rerun."""
    import pyarrow.parquet as pq

    from pmg_tasks.creatives_table import COLUMNS, upsert_creatives
    from pmg_tasks.settings import Settings
    from pmg_tasks.warehouse import Warehouse

    table = pq.read_table(manifest)
    rows = table.num_rows
    built_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {"rows": rows, "rss_after_reading_manifest_mb": round(built_rss, 1)}
    # DuckDB under the memory limit publish runs with (settings.duckdb_memory_limit).
    with Warehouse(url, memory_limit=Settings().duckdb_memory_limit if engine == "duckdb" else "") as warehouse:
        started = time.perf_counter()
        if engine == "duckdb":
            warehouse.duckdb.register("bare_rows", table.select(list(COLUMNS)))
            warehouse.duckdb.execute("CREATE TABLE bare_load AS SELECT * FROM bare_rows").fetchall()
            warehouse.duckdb.unregister("bare_rows")
        else:
            import io

            import pyarrow.csv as csv

            buffer = io.BytesIO()
            csv.write_csv(table.select(list(COLUMNS)), buffer, csv.WriteOptions(include_header=False, quoting_style="all_valid"))
            buffer.seek(0)
            connection = warehouse.engine.raw_connection()
            with connection.cursor() as cursor:
                cursor.execute(
                    "CREATE TABLE bare_load (" + ", ".join(f"{c} TEXT" for c in COLUMNS) + ")"
                )
                cursor.copy_expert("COPY bare_load FROM STDIN WITH (FORMAT csv)", buffer)
            connection.commit()
            connection.close()
        figures["bare_load_seconds"] = round(time.perf_counter() - started, 3)
        for phase in ("upsert", "rerun"):
            started = time.perf_counter()
            upsert_creatives(warehouse, DS, table)
            figures[f"{phase}_seconds"] = round(time.perf_counter() - started, 3)
        count = warehouse.fetch_rows("SELECT count(*) FROM generated_creatives")[0][0]
    figures["table_rows"] = int(count)
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    figures["upsert_over_bare_load"] = round(figures["upsert_seconds"] / figures["bare_load_seconds"], 2)
    return figures


def _child(engine: str, manifest: str, url: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.publish", "--child", engine, "--manifest", manifest, "--url", url],
        capture_output=True, text=True, cwd=REPO,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{engine} measurement failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


def _postgres_database():
    """(url, drop) of a throwaway database, or (None, reason)."""
    try:
        import psycopg2
        from sqlalchemy.engine import make_url
    except ImportError as error:
        return None, str(error)
    server = make_url(os.environ.get("PMG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    try:
        admin = psycopg2.connect(host=server.host, port=server.port or 5432, user=server.username,
                                 password=server.password, dbname=server.database or "postgres", connect_timeout=3)
    except Exception as error:  # no server: say so in the results
        return None, f"no PostgreSQL at {server.host}:{server.port or 5432}: {str(error).strip()[:200]}"
    admin.autocommit = True
    name = f"pmg_bench_{secrets.token_hex(6)}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')

    def drop():
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return server.set(drivername="postgresql+psycopg2", database=name).render_as_string(hide_password=False), drop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child", choices=["duckdb", "postgresql"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    args = parser.parse_args(argv if argv is not None else [])
    if args.child:
        print(json.dumps(measure(args.child, args.manifest, args.url)))
        return 0
    import pyarrow.parquet as pq

    load_before = list(os.getloadavg())
    results = {}
    with tempfile.TemporaryDirectory(prefix="pmg-bench-publish-") as tmp:
        manifest = f"{tmp}/manifest.parquet"
        pq.write_table(synthetic_manifest(args.rows), manifest, compression="zstd")
        results["duckdb"] = _child("duckdb", manifest, f"duckdb:///{tmp}/bench.duckdb")
        url, drop = _postgres_database()
        if url is None:
            results["postgresql"] = {"skipped": drop}
        else:
            try:
                results["postgresql"] = _child("postgresql", manifest, url)
            finally:
                drop()
    report = {
        "benchmark": "publish",
        "command": f"python -m benchmarks.publish --rows {args.rows}",
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": load_before, "load_average_after": list(os.getloadavg())},
        "targets": {"duckdb_upsert_seconds": 60, "duckdb_peak_rss_mb": 2048},
        **results,
    }  # fmt: skip
    print(f"{args.rows:,} manifest rows into generated_creatives:")
    for engine, figures in results.items():
        if "skipped" in figures:
            print(f"  {engine:10s}: skipped ({figures['skipped']})")
            continue
        print(f"  {engine:10s}: bare load {figures['bare_load_seconds']:6.2f} s, upsert {figures['upsert_seconds']:6.2f} s "
              f"({figures['upsert_over_bare_load']:.2f}x), rerun {figures['rerun_seconds']:6.2f} s, "
              f"peak RSS {figures['peak_rss_mb']:.0f} MB (manifest read: {figures['rss_after_reading_manifest_mb']:.0f} MB)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
