"""The MovieLens importer on a small folder written here, and on the real dataset when it is present."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from pmg_tasks.extract import extract_clickstream
from pmg_tasks.importers import ImportDataError, event_type_for, import_movielens
from pmg_tasks.settings import Settings
from pmg_tasks.validation import validate_events
from pmg_tasks.warehouse import Warehouse, connect

MOVIES = (
    b"movieId,title,genres\n"
    b"1,Toy Story (1995),Adventure|Animation|Children\n"
    b'2,"Lock, Stock and Two Smoking Barrels (1998)",Comedy|Crime\n'
    b"3,Untitled Project,(no genres listed)\n"
) + b"4,Am\xe9lie (2001),Comedy|Romance\n"  # a latin-1 byte in a UTF-8 file
RATINGS = """\
userId,movieId,rating,timestamp
1,1,5.0,964982703
1,2,4.0,964982224
1,4,3.5,964983815
2,1,2.5,1445714994
2,3,4.5,1445715054
"""
TAGS = """\
userId,movieId,tag,timestamp
2,1,pixar,1445714994
3,1,Pixar,1445714995
3,1,funny,1445714996
2,3,"Ignore previous instructions; DROP TABLE items",1445714997
"""


@pytest.fixture
def folder(tmp_path):
    directory = tmp_path / "ml"
    directory.mkdir()
    (directory / "movies.csv").write_bytes(MOVIES)
    (directory / "ratings.csv").write_text(RATINGS)
    (directory / "tags.csv").write_text(TAGS)
    return directory


def test_ratings_become_events_and_movies_items(tmp_path, folder):
    with Warehouse(f"duckdb:///{tmp_path / 'wh.duckdb'}") as warehouse:
        result = import_movielens(warehouse, folder)
        events = {
            r[0]: r[1:]
            for r in warehouse.fetch_rows(
                "SELECT event_id, user_id, item_id, session_id, event_type, event_ts, dwell_seconds FROM events"
            )
        }
        items = {
            r[0]: r[1:]
            for r in warehouse.fetch_rows("SELECT item_id, title, categories, attributes FROM items")
        }
        users = warehouse.fetch_rows("SELECT user_id, created_at FROM users ORDER BY user_id")
        again = import_movielens(warehouse, folder)
        counts = warehouse.fetch_rows(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM items), (SELECT count(*) FROM users)"
        )

    assert result["ratings"] == result["events_inserted"] == 5
    assert (result["movies"], result["items_written"], result["users_added"]) == (4, 4, 2)
    assert events["ml-1-1-964982703"] == (
        "ml1",
        "ml1",
        "ml1-20000730",
        "purchase",
        dt.datetime(2000, 7, 30, 18, 45, 3),
        None,
    )
    assert [events[k][3] for k in sorted(events)] == ["purchase", "add_to_cart", "click", "view", "purchase"]
    assert items["ml2"][:2] == ("Lock, Stock and Two Smoking Barrels (1998)", "Comedy|Crime")
    assert items["ml3"][1] is None and items["ml4"][0] == "Am\ufffdlie (2001)"
    assert json.loads(items["ml1"][2]) == {
        "era": "1990s",
        "year": 1995,
        "tags": ["pixar", "funny"],
        "top_tag": "pixar",
    }
    assert json.loads(items["ml3"][2])["tags"] == ["ignore previous instructions; drop tabl…"]  # data, capped
    assert users == [
        ("ml1", dt.datetime(2000, 7, 30, 18, 37, 4)),
        ("ml2", dt.datetime(2015, 10, 24, 19, 29, 54)),
    ]
    # Idempotent: nothing new the second time.
    assert (again["events_inserted"], again["users_added"]) == (0, 0)
    assert counts == [(5, 4, 2)]


def test_event_type_follows_the_rating():
    assert [event_type_for(r) for r in (5, 4.5, 4.0, 3.5, 3.0, 2.5, 0.5)] == [
        "purchase",
        "purchase",
        "add_to_cart",
        "click",
        "click",
        "view",
        "view",
    ]


def test_a_folder_without_ratings_is_a_clear_error(tmp_path):
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n")
    with (
        Warehouse(f"duckdb:///{tmp_path / 'wh.duckdb'}") as warehouse,
        pytest.raises(ImportDataError, match="ratings.csv is missing"),
    ):
        import_movielens(warehouse, tmp_path)


def test_real_movielens_imports_extracts_and_validates(tmp_path, movielens_dir):
    settings = Settings(home=tmp_path, lookback_days=30)
    with connect(settings) as warehouse:
        result = import_movielens(warehouse, movielens_dir)
        last = warehouse.fetch_rows("SELECT max(event_ts) FROM events")[0][0]
    with open(movielens_dir / "ratings.csv", "rb") as handle:
        lines = sum(1 for _ in handle)
    assert result["ratings"] == result["events_inserted"] == lines - 1
    assert result["users_added"] > 0 and result["movies"] > 0

    ds = last.date().isoformat()
    extracted = extract_clickstream(settings, ds)
    validated = validate_events(settings, ds)
    assert extracted["events"] > 0 and extracted["items_quarantined"] == 0
    assert validated["extracted"] == extracted["events"] == validated["valid"] + validated["quarantined"]
    assert validated["bad_fraction"] <= settings.max_bad_fraction
