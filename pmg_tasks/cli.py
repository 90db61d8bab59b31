"""The `pmg` command.

    pmg run --ds DATE [--campaigns F]   run the nightly DAG through Airflow on the configured warehouse and store
    pmg demo run                        seed, build test-size models, run the nightly DAG, print outputs
    pmg demo seed                       seed the embedded warehouse and a campaigns file
    pmg models build-test-size --out D  tiny random models for every role, saved with save_pretrained
    pmg settings                        the effective settings, as PMG_* variables
    pmg doctor                          check warehouse, store, models, Airflow pools and queues, campaigns
    pmg plan --estimate --ds DATE [--gpus N]  what a night will cost (users, generations, shards, GPU-hours)
    pmg pools                           create or resize pmg's Airflow pools from the settings (AIRFLOW_HOME's Airflow)
    pmg import movielens DIR            import a MovieLens folder into the warehouse
    pmg import events FILE --map T=S    import a CSV/Parquet clickstream through a column mapping
    pmg import items FILE --map T=S     import an item catalog (CSV, Parquet, JSON Lines) through a column mapping
    pmg evaluate preferences            Recall@20 / NDCG@20 of the preference GNN and its baselines on the warehouse
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import subprocess
import sys
from pathlib import Path

from pmg_tasks.settings import Settings


def _yesterday() -> str:
    return (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()


def seed_demo(settings: Settings, ds: str, users: int, items: int, days: int, overwrite_campaigns: bool) -> dict:
    """Seed the warehouse with a synthetic shop whose last day is `ds`; write campaigns if absent."""
    from pmg_tasks.demo.seed import demo_campaigns_yaml, make_shop, seed_warehouse, write_item_images
    from pmg_tasks.store import open_store
    from pmg_tasks.warehouse import connect

    last_day = dt.date.fromisoformat(ds)
    shop = make_shop(users, items, last_day, days, seed=settings.seed)
    # Item pictures go to the store first, so every image_uri the warehouse gets names an object.
    shop = dataclasses.replace(shop, items=write_item_images(open_store(settings), shop.items))
    with connect(settings) as warehouse:
        counts = seed_warehouse(warehouse, shop)
    campaigns = Path(settings.campaigns_file)
    if overwrite_campaigns or not campaigns.exists():
        campaigns.parent.mkdir(parents=True, exist_ok=True)
        campaigns.write_text(demo_campaigns_yaml(shop, last_day))
    return {**counts, "campaigns_file": str(campaigns)}


def with_test_size_models(settings: Settings) -> Settings:
    """Settings whose empty model paths point at test-size models in the pmg home (built once)."""
    from pmg_tasks.settings import ModelPaths

    out = settings.home / "models" / "test-size"
    built = ModelPaths(diffusion=str(out / "diffusion"), clip=str(out / "clip"), llm=str(out / "llm"))
    roles = [role for role in ("diffusion", "clip", "llm") if not getattr(settings.models, role)]
    if not roles:
        return settings
    # The stamp is written after every role is saved, so an interrupted build is redone, never reused.
    stamp = out / ".complete"
    if not stamp.exists():
        from pmg_tasks.models.test_size import build_test_size_models

        build_test_size_models(out)
        stamp.touch()
    chosen = settings.models.model_copy(update={role: getattr(built, role) for role in roles})
    return settings.model_copy(update={"models": chosen})


def demo_run(args: argparse.Namespace) -> int:
    from pmg_tasks.airflow_run import NightlyRunError, run_nightly_dag
    from pmg_tasks.demo.ownership import DemoWarehouseInUse

    settings = Settings()
    print(f"pmg home: {settings.home}")
    try:
        seeded = seed_demo(settings, args.ds, args.users, args.items, args.days, overwrite_campaigns=False)
    except DemoWarehouseInUse as error:
        print(f"pmg demo: {error}", file=sys.stderr)
        return 2
    print(f"seeded {seeded['events']} events, {seeded['items']} items, {seeded['users']} users; "
          f"campaigns: {seeded['campaigns_file']}")
    settings = with_test_size_models(settings)
    print(f"running the {args.ds} nightly DAG through Airflow (a minute or two)...")
    try:
        run = run_nightly_dag(settings, args.ds)
    except NightlyRunError as error:
        print(f"pmg demo: {error}", file=sys.stderr)
        return 1
    return print_outputs(settings, args.ds, run.log_file)


def nightly_run(args: argparse.Namespace) -> int:
    """`pmg run`: the nightly DAG through Airflow on the configured warehouse, store and models."""
    from pmg_tasks.airflow_run import NightlyRunError, run_nightly_dag
    from pmg_tasks.campaigns import CampaignError, load_campaigns

    settings = Settings()
    if args.campaigns:
        settings = settings.model_copy(update={"campaigns_file": str(Path(args.campaigns).expanduser().resolve())})
    try:
        dt.date.fromisoformat(args.ds)
    except ValueError:
        print(f"pmg run: --ds {args.ds!r} is not a date; write it as YYYY-MM-DD", file=sys.stderr)
        return 2
    missing = [f"PMG_MODELS__{role.upper()}" for role in ("diffusion", "clip") if not getattr(settings.models, role)]
    if missing:
        print(f"pmg run: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: point "
              f"{'it' if len(missing) == 1 else 'them'} at local model folders (or make test-size ones with "
              "`pmg models build-test-size --out DIR`, which prints the settings)", file=sys.stderr)
        return 2
    try:
        load_campaigns(settings.campaigns_file)
    except CampaignError as error:
        print(f"pmg run: {error} (or pass --campaigns PATH)", file=sys.stderr)
        return 2
    print(f"running pmg_nightly for {args.ds} through Airflow on {settings.store_root}...")
    try:
        run = run_nightly_dag(settings, args.ds)
    except NightlyRunError as error:
        print(f"pmg run: {error}", file=sys.stderr)
        return 1
    return print_outputs(settings, args.ds, run.log_file)


def evaluate_preferences(args: argparse.Namespace) -> int:
    """`pmg evaluate preferences`: the GNN, BPR-MF, LightGCN and popularity on one per-user temporal split."""
    import json

    from pmg_tasks.preferences.comparison import (
        compare_preference_models,
        split_events,
        table,
        warehouse_events,
    )

    settings = Settings()
    if args.movielens:
        from pmg_tasks.preferences.movielens import load_movielens, positive_events

        data = load_movielens(args.movielens)
        events, items, source = positive_events(data), data.movies, f"MovieLens at {args.movielens}"
    else:
        events, items = warehouse_events(settings)
        source = f"the warehouse {settings.warehouse_url or settings.warehouse_conn_id}"
    split = split_events(
        events, validation_fraction=settings.preferences.validation_fraction,
        validation_min_items=settings.preferences.validation_min_items, test_fraction=args.test_fraction,
        min_interactions=args.min_interactions,
    )  # fmt: skip
    print(f"evaluating on {source}: {len(events)} events; split {split.sizes()}")
    try:
        report = compare_preference_models(
            split, items, settings, learning_rates=tuple(args.learning_rates), max_epochs=args.max_epochs
        )
    except ValueError as error:
        print(f"pmg evaluate preferences: {error}", file=sys.stderr)
        return 2
    print(table(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"source": source, **report}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def print_outputs(settings: Settings, ds: str, log_file: Path) -> int:
    """Where a finished night's creatives, manifests and report are; 1 when the success marker is missing."""
    from pmg_tasks.layout import creatives_prefix, report_key, run_key, success_key
    from pmg_tasks.store import LocalStore, open_store, read_json

    store = open_store(settings)

    def where(key: str) -> str:
        # A person copies a local path into a file browser more happily than a percent-encoded URI.
        return str(store.path(key)) if isinstance(store, LocalStore) else store.url(key)

    if not store.exists(success_key(ds)):
        print(f"the DAG finished but {success_key(ds)} is missing; see {log_file}", file=sys.stderr)
        return 1
    success = read_json(store, success_key(ds))
    validation = read_json(store, run_key(ds, "validation.json"))
    print(f"\nDone: {success['rows']} creatives; {validation['valid']} valid and {validation['quarantined']} "
          f"quarantined events of {validation['extracted']}.")
    print(f"  creatives: {where(creatives_prefix(ds))}/")
    for campaign, key in sorted(success["manifests"].items()):
        print(f"  manifest ({campaign}): {where(key)}")
    print(f"  report:    {where(report_key(ds))}")
    print(f"  airflow log: {log_file}")
    return 0


def estimate(args: argparse.Namespace) -> int:
    """`pmg plan --estimate`: the cost of a night, printed before anything runs."""
    import json

    from pmg_tasks.campaigns import CampaignError
    from pmg_tasks.plan.estimate import RESULTS_DIR, estimate_night, format_estimate, read_throughput

    try:
        dt.date.fromisoformat(args.ds)
    except ValueError:
        print(f"pmg plan: --ds {args.ds!r} is not a date; write it as YYYY-MM-DD", file=sys.stderr)
        return 2
    if args.gpus < 1:
        print(f"pmg plan: --gpus must be at least 1, got {args.gpus}", file=sys.stderr)
        return 2
    throughput = read_throughput(args.results or RESULTS_DIR, args.images_per_s, args.keyword_requests_per_s)
    try:
        night = estimate_night(Settings(), args.ds, args.gpus, throughput)
    except CampaignError as error:
        print(f"pmg plan: {error}", file=sys.stderr)
        return 2
    print(json.dumps(night.to_dict(), indent=2) if args.json else format_estimate(night))
    return 0


def set_airflow_pools() -> int:
    """`pmg pools`: the pools of these settings, in the Airflow this process's environment names."""
    import os

    from pmg_tasks.airflow_run import NightlyRunError, set_pools

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        specs = set_pools(Settings(), env)
    except (NightlyRunError, OSError) as error:
        print(f"pmg pools: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"pmg pools: `airflow pools set` failed (exit {error.returncode}); is the metadata database "
              "migrated (`airflow db migrate`)?", file=sys.stderr)
        return 1
    for name, slots, what in specs:
        print(f"{name}: {slots} slot{'s' if slots != 1 else ''} ({what})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pmg", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", help="run the nightly DAG through Airflow on the configured warehouse and store",
        description="Migrates Airflow's metadata database (in PMG_HOME/airflow), sets the pools and runs the "
        "real pmg_nightly DAG for one date (airflow dags test). Fails, with the reason, when Airflow runs "
        "nothing or a task does not succeed.",
    )
    run.add_argument("--ds", required=True, help="the date to process, YYYY-MM-DD")
    run.add_argument("--campaigns", type=Path, help="the campaigns file (default: PMG_CAMPAIGNS_FILE)")

    demo = commands.add_parser("demo", help="the embedded demo").add_subparsers(dest="demo_command", required=True)
    for name, helptext in (("run", "seed, then run the nightly DAG end to end"), ("seed", "seed only")):
        sub = demo.add_parser(name, help=helptext)
        sub.add_argument("--ds", default=_yesterday(), help="the date to process (default: yesterday, UTC)")
        sub.add_argument("--users", type=int, default=60)
        sub.add_argument("--items", type=int, default=40)
        sub.add_argument("--days", type=int, default=7, help="days of events ending at --ds")
        if name == "seed":
            sub.add_argument("--overwrite-campaigns", action="store_true")

    models = commands.add_parser("models", help="model utilities").add_subparsers(dest="models_command", required=True)
    build = models.add_parser("build-test-size", help="tiny random models for every role, built locally")
    build.add_argument("--out", type=Path, required=True)

    commands.add_parser("settings", help="print the effective settings as PMG_* variables")
    commands.add_parser(
        "doctor", help="check that this machine is ready for a night: one line per check, each failure with its fix",
        description="Checks the warehouse and its tables, the object store (a probe key written, read and "
        "deleted), every configured model, the Airflow pools and queues the DAG needs, the campaigns file and, "
        "where a GPU is present, the GPU extra. Exits 1 when any check fails.",
    )
    plan = commands.add_parser(
        "plan", help="estimate a night before it runs",
        description="Reads the warehouse, the campaigns and the store (nothing is extracted, trained or "
        "generated) and prints users per campaign, requested creatives, distinct generations, shards, keyword "
        "requests after the cache, and GPU-hours and wall time from measured throughput (docs/scale-out.md).",
    )
    plan.add_argument("--estimate", action="store_true", required=True, help="estimate only (the one mode)")
    plan.add_argument("--ds", required=True, help="the date to estimate, YYYY-MM-DD")
    plan.add_argument("--gpus", type=int, default=1, help="GPU workers (default 1)")
    plan.add_argument("--images-per-s", type=float, help="one GPU's images/s, instead of benchmarks/results/")
    plan.add_argument("--keyword-requests-per-s", type=float, help="one GPU's vLLM requests/s, instead of benchmarks/results/")
    plan.add_argument("--results", type=Path, help="benchmark results folder (default: benchmarks/results)")
    plan.add_argument("--json", action="store_true", help="print the estimate as JSON")
    commands.add_parser(
        "pools", help="create or resize pmg's Airflow pools from the settings",
        description="Sets the GPU and LLM pools, with the slot counts the DAG caps its tasks with, in the "
        "Airflow this environment names (AIRFLOW_HOME, AIRFLOW__DATABASE__SQL_ALCHEMY_CONN). Safe to repeat.",
    )

    from pmg_tasks.preferences.comparison import LEARNING_RATES, MAX_EPOCHS, MIN_INTERACTIONS, TEST_FRACTION

    evaluate = commands.add_parser("evaluate", help="offline evaluation").add_subparsers(
        dest="evaluate_command", required=True
    )
    preferences = evaluate.add_parser(
        "preferences", help="Recall@20 / NDCG@20 of the preference GNN beside BPR-MF, LightGCN and popularity",
        description="Splits each user's distinct items by time (the latest are the test, the ones before them "
        "the validation every model early-stops on), trains every model with the same embedding size, hard "
        "negatives and learning-rate grid, and prints a table (docs/preference_graph.md).",
    )  # fmt: skip
    preferences.add_argument("--movielens", type=Path, help="a MovieLens folder instead of the warehouse")
    preferences.add_argument("--test-fraction", type=float, default=TEST_FRACTION, help="each user's latest share held out")
    preferences.add_argument("--min-interactions", type=int, default=MIN_INTERACTIONS, help="users with fewer items hold none out")
    preferences.add_argument("--learning-rates", type=float, nargs="+", default=list(LEARNING_RATES))
    preferences.add_argument("--max-epochs", type=int, default=MAX_EPOCHS, help="early stopping ends most sooner")
    preferences.add_argument("--out", type=Path, help="also write the report as JSON")

    from pmg_tasks.importers.cli import add_import_commands

    add_import_commands(commands)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "run":
        return nightly_run(args)
    if args.command == "doctor":
        from pmg_tasks.doctor import doctor

        return doctor(Settings())
    if args.command == "evaluate":
        return evaluate_preferences(args)
    if args.command == "demo" and args.demo_command == "run":
        return demo_run(args)
    if args.command == "demo":
        from pmg_tasks.demo.ownership import DemoWarehouseInUse

        try:
            seeded = seed_demo(Settings(), args.ds, args.users, args.items, args.days, args.overwrite_campaigns)
        except DemoWarehouseInUse as error:
            print(f"pmg demo: {error}", file=sys.stderr)
            return 2
        print(seeded)
        return 0
    if args.command == "import":
        from pmg_tasks.importers.cli import run_import

        return run_import(args)
    if args.command == "pools":
        return set_airflow_pools()
    if args.command == "plan":
        return estimate(args)
    if args.command == "models":
        from pmg_tasks.models.test_size import build_test_size_models

        paths = build_test_size_models(args.out)
        for role, path in paths.model_dump().items():
            print(f"PMG_MODELS__{role.upper()}={path}")
        return 0
    for name, value in sorted(Settings().to_env().items()):
        print(f"{name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
