"""Import a MovieLens dataset (the CSV layout of ml-latest and ml-latest-small) into the warehouse.

    pmg import movielens ../shared/data/movielens-latest-small

- ratings.csv (userId, movieId, rating, timestamp) -> events, one per rating:
    event_id      ml-<userId>-<movieId>-<timestamp>   stable, so a re-import adds nothing
    user_id       ml<userId>
    item_id       ml<movieId>
    session_id    ml<userId>-<YYYYMMDD>               a user's ratings of one (UTC) day
    event_type    by rating: >= 4.5 purchase, >= 4.0 add_to_cart, >= 3.0 click, else view
    event_ts      the epoch seconds, as naive UTC
    dwell_seconds null (MovieLens does not know)
- movies.csv (movieId, title, genres) -> items: item_id ml<movieId>, the title as given, categories the
  genres ('(no genres listed)' is none), attributes a JSON object {"era": "1990s", "year": 1995,
  "tags": [...top tags...], "top_tag": "..."} with the era from the year in the title and up to five
  most used tags from tags.csv (optional file; user-written text, kept as data and cleaned).
- users: every user who rated, created_at their first rating.

The rating -> event type rule reads a rating as how far a user went with a film: a 5 is as strong a
signal as a purchase, a 2 no more than a glance. PMG weights events the same way (histories.py).

Items are upserted (a re-import rewrites them with the same values), events and users are only added.
Ratings stream through DuckDB's CSV reader, so the 32-million-rating ml-latest imports like the small one.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import Counter, defaultdict
from pathlib import Path

from pmg_tasks.importers import staging
from pmg_tasks.importers.source import ImportDataError, read_params, read_sql, transfer, working_connection
from pmg_tasks.text_safety import clean_text
from pmg_tasks.warehouse import EVENT_COLUMNS, Warehouse, items_schema

log = logging.getLogger(__name__)

# (lowest rating, event type), highest first; below the last: view.
RATING_EVENT_TYPES = ((4.5, "purchase"), (4.0, "add_to_cart"), (3.0, "click"))
NO_GENRES = "(no genres listed)"
TOP_TAGS = 5
_YEAR = re.compile(r"\((\d{4})\)\s*$")
RATINGS_COLUMNS = {"userId": "BIGINT", "movieId": "BIGINT", "rating": "DOUBLE", "timestamp": "BIGINT"}


def event_type_for(rating: float) -> str:
    for lowest, event_type in RATING_EVENT_TYPES:
        if rating >= lowest:
            return event_type
    return "view"


def import_movielens(warehouse: Warehouse, directory: str | Path, *, memory_limit: str = "2GB") -> dict:
    """Import ratings, movies (+ tags) and users from a MovieLens folder; returns counts."""
    directory = Path(directory)
    for name in ("movies.csv", "ratings.csv"):
        if not (directory / name).is_file():
            raise ImportDataError(f"{directory} is not a MovieLens folder: {name} is missing")
    warehouse.apply_ddl()

    tags = _top_tags(directory / "tags.csv")
    items = _movies(directory / "movies.csv", tags)
    items_written = staging.load(warehouse, "items", batches=items)

    with working_connection(warehouse, memory_limit) as con:
        params = read_params(directory / "ratings.csv", columns=RATINGS_COLUMNS)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE import_mapped AS {_ratings_sql(read_sql('csv', columns=RATINGS_COLUMNS))}",
            params,
        ).fetchall()
        ratings = int(con.execute("SELECT count(*) FROM import_mapped").fetchall()[0][0])
        inserted = transfer(warehouse, con, "events", f"SELECT {', '.join(EVENT_COLUMNS)} FROM import_mapped")
        users = transfer(
            warehouse,
            con,
            "users",
            "SELECT user_id, min(event_ts) AS created_at, CAST(NULL AS VARCHAR) AS country "
            "FROM import_mapped GROUP BY user_id",
        )
    result = {
        "directory": str(directory),
        "ratings": ratings,
        "events_inserted": inserted,
        "events_already_present": ratings - inserted,
        "movies": items.num_rows,
        "items_written": items_written,
        "tagged_movies": len(tags),
        "users_added": users,
    }
    log.info("MovieLens %s: %s", directory, result)
    return result


def _ratings_sql(from_sql: str) -> str:
    ts = "make_timestamp(src.timestamp * 1000000)"
    whens = " ".join(
        f"WHEN src.rating >= {lowest} THEN '{event_type}'" for lowest, event_type in RATING_EVENT_TYPES
    )
    return f"""
        SELECT 'ml-' || CAST(src.userId AS VARCHAR) || '-' || CAST(src.movieId AS VARCHAR) || '-' || CAST(src.timestamp AS VARCHAR) AS event_id,
               'ml' || CAST(src.userId AS VARCHAR) AS user_id,
               'ml' || CAST(src.movieId AS VARCHAR) AS item_id,
               'ml' || CAST(src.userId AS VARCHAR) || '-' || strftime({ts}, '%Y%m%d') AS session_id,
               CASE {whens} ELSE 'view' END AS event_type,
               {ts} AS event_ts,
               CAST(NULL AS DOUBLE) AS dwell_seconds
        FROM {from_sql} AS src
    """


def _read_csv(path: Path):
    """Rows of a small MovieLens CSV as dicts; bytes that are not UTF-8 become U+FFFD."""
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        yield from csv.DictReader(handle)


def _top_tags(path: Path) -> dict[str, list[str]]:
    """movieId -> its most used tags (cleaned, case-folded), most used first, then alphabetical."""
    if not path.is_file():
        return {}
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in _read_csv(path):
        tag = clean_text(row.get("tag"), 40).lower()
        if tag and row.get("movieId"):
            counts[row["movieId"]][tag] += 1
    return {
        movie: [tag for tag, _ in sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_TAGS]]
        for movie, tags in counts.items()
    }


def _movies(path: Path, tags: dict[str, list[str]]):
    import pyarrow as pa

    rows = []
    for row in _read_csv(path):
        movie_id = (row.get("movieId") or "").strip()
        if not movie_id:
            continue
        title = row.get("title") or ""
        attributes: dict = {}
        year = _YEAR.search(title)
        if year:
            attributes["era"] = f"{int(year.group(1)) // 10 * 10}s"
            attributes["year"] = int(year.group(1))
        if movie_id in tags:
            attributes["tags"] = tags[movie_id]
            attributes["top_tag"] = tags[movie_id][0]
        genres = (row.get("genres") or "").strip()
        rows.append(
            {
                "item_id": f"ml{movie_id}",
                "title": title,
                "categories": None if genres in {"", NO_GENRES} else genres,
                "description": None,
                "attributes": json.dumps(attributes, sort_keys=True, ensure_ascii=False),
                "image_uri": None,
                "updated_at": None,
            }
        )
    # One row per item_id (the upsert cannot touch a row twice); the last one in the file wins.
    unique = list({row["item_id"]: row for row in rows}.values())
    return pa.Table.from_pylist(unique, schema=items_schema())
