"""`pmg import ...`: the importers on the command line, into the warehouse the settings name.

    pmg import movielens DIR                    ratings, movies (+ tags) and users of a MovieLens folder
    pmg import events FILE --map T=S,...        a CSV or Parquet clickstream, through a column mapping
        [--types T=S,...] [--ts-unit s|ms|us] [--format csv|parquet] [--delimiter C] [--encoding E]

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
    events.add_argument("--format", choices=("csv", "parquet"), help="default: from the file name")
    events.add_argument("--delimiter", help="CSV delimiter (default: detected)")
    events.add_argument("--encoding", help="CSV encoding, e.g. latin-1 (default: utf-8)")


def run_import(args: argparse.Namespace) -> int:
    from pmg_tasks.importers import ImportDataError, import_events_file, import_movielens
    from pmg_tasks.settings import Settings
    from pmg_tasks.warehouse import connect

    settings = Settings()
    try:
        with connect(settings) as warehouse:
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
