"""Importers of real data into the warehouse: MovieLens, and any clickstream or item catalog file through a
column mapping.

See docs/warehouse.md. Both are idempotent: importing the same data twice leaves the warehouse as once.
"""

from pmg_tasks.importers.events_file import import_events_file, parse_mapping, parse_type_mapping
from pmg_tasks.importers.items_file import import_items_file, parse_item_mapping
from pmg_tasks.importers.movielens import RATING_EVENT_TYPES, event_type_for, import_movielens
from pmg_tasks.importers.source import ImportDataError

__all__ = [
    "RATING_EVENT_TYPES",
    "ImportDataError",
    "event_type_for",
    "import_events_file",
    "import_items_file",
    "import_movielens",
    "parse_item_mapping",
    "parse_mapping",
    "parse_type_mapping",
]
