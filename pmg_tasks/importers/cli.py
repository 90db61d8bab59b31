"""`pmg import ...`: the importers on the command line, into the warehouse the settings name.

    pmg import movielens DIR                    ratings, movies (+ tags) and users of a MovieLens folder
    pmg import events FILE --map T=S,...        a CSV, Parquet or JSON Lines clickstream, through a column mapping
        [--types T=S,...] [--ts-unit s|ms|us] [--format csv|parquet|jsonl] [--delimiter C] [--encoding E]
    pmg import items FILE --map T=S,...         an item catalog (CSV, Parquet, JSON Lines), through a column mapping
        [--categories-delimiter C] [--images-dir D] [--rejected FILE.csv] [--json] [--format ...] [--encoding E]

The warehouse is Settings() -> connect(settings): PMG_WAREHOUSE_URL, PMG_WAREHOUSE_CONN_ID (an Airflow
connection, e.g. from AIRFLOW_CONN_<ID>) or the embedded DuckDB file in PMG_HOME.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_import_commands(commands) -> None:
    """Add the `import` group to the `pmg` parser's subcommands."""
    group = commands.add_parser("import", help="import real data into the warehouse").add_subparsers(
        dest="import_command", required=True
    )
    movielens = group.add_parser("movielens", help="a MovieLens folder (ratings.csv, movies.csv, tags.csv)")
    movielens.add_argument("directory", type=Path)

    events = group.add_parser(
        "events",
        help="a CSV or Parquet clickstream file",
        description="Columns: event_id user_id item_id session_id event_type event_ts dwell_seconds. A column "
        "the file calls by that name needs no mapping; without event_id, ids are made from each event's content.",
    )
    events.add_argument("file", type=Path)
    events.add_argument(
        "--map",
        action="append",
        metavar="TARGET=SOURCE,...",
        help="events column = file column, e.g. event_id=id,user_id=uid,event_ts=time (repeatable)",
    )
    events.add_argument(
        "--types",
        action="append",
        metavar="TYPE=VALUE,...",
        help="pmg event type = the file's value, e.g. view=pageview,purchase=buy (repeatable)",
    )
    events.add_argument("--ts-unit", choices=("s", "ms", "us"), default="s", help="unit of epoch timestamps")
    _file_options(events)

    items = group.add_parser(
        "items",
        help="an item catalog: CSV, Parquet or JSON Lines",
        description="Targets: item_id title (required) description categories attributes image updated_at; any "
        "other target is an attribute (brand=Manufacturer). A column the file calls by a target's name needs no "
        "mapping. Rejected rows are reported with their reason; the summary suggests a keyword scenario.",
    )
    items.add_argument("file", type=Path)
    items.add_argument(
        "--map",
        action="append",
        metavar="TARGET=SOURCE,...",
        help="item target = file column, e.g. item_id=sku,title=name,brand=maker,image=picture (repeatable)",
    )
    items.add_argument("--categories-delimiter", default="|", help="between categories in a text column (default |)")
    items.add_argument("--images-dir", type=Path, help="relative image paths start here (default: the file's folder)")
    items.add_argument("--ts-unit", choices=("s", "ms", "us"), default="s", help="unit of epoch updated_at values")
    items.add_argument("--rejected", type=Path, metavar="FILE.csv", help="write every rejected row and its reason here")
    items.add_argument("--json", action="store_true", help="print the result as JSON instead of a summary")
    _file_options(items)


def _file_options(parser) -> None:
    parser.add_argument("--format", choices=("csv", "parquet", "jsonl"), help="default: from the file name")
    parser.add_argument("--delimiter", help="CSV delimiter (default: detected)")
    parser.add_argument(
        "--encoding", help="text encoding, any Python codec, e.g. cp1252 (default: utf-8; bytes that are not "
        "valid become U+FFFD and are counted per column)"
    )


def run_import(args: argparse.Namespace) -> int:
    from pmg_tasks.importers import ImportDataError, import_events_file, import_items_file, import_movielens
    from pmg_tasks.importers.items_file import describe_import
    from pmg_tasks.settings import Settings
    from pmg_tasks.store import open_store
    from pmg_tasks.warehouse import connect

    settings = Settings()
    try:
        with connect(settings) as warehouse:
            if args.import_command == "items":
                result = import_items_file(
                    warehouse,
                    args.file,
                    args.map,
                    store=open_store(settings),
                    fmt=args.format,
                    delimiter=args.delimiter,
                    encoding=args.encoding,
                    categories_delimiter=args.categories_delimiter,
                    images_dir=args.images_dir,
                    ts_unit=args.ts_unit,
                    rejected_path=args.rejected,
                    memory_limit=settings.duckdb_memory_limit,
                )
                print(json.dumps(result, indent=2, default=str) if args.json else describe_import(result))
                if result["scenario"]["suggested"] != settings.keywords.scenario and not args.json:
                    print(f"  (the scenario in force is {settings.keywords.scenario})")
                return 0
            if args.import_command == "movielens":
                result = import_movielens(
                    warehouse, args.directory, memory_limit=settings.duckdb_memory_limit
                )
            else:
                result = import_events_file(
                    warehouse,
                    args.file,
                    args.map,
                    args.types,
                    ts_unit=args.ts_unit,
                    fmt=args.format,
                    delimiter=args.delimiter,
                    encoding=args.encoding,
                    memory_limit=settings.duckdb_memory_limit,
                )
    except ImportDataError as error:
        print(f"pmg import: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0
