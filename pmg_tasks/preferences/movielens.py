"""MovieLens (ml-latest-small) as an evaluation set for the preference graph, read straight from its CSVs.

For evaluation only: production data comes through the warehouse (`pmg import movielens`), never through
this module. The data is for research use and never belongs in the repository; callers pass the folder.

The protocol (docs/preference_graph.md): ratings >= 3.5 are positives; for each user with >= 5 positives
the latest 20% by time are the test set; test items never seen in training are dropped; ranking is over
all training items with each user's training items removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


POSITIVE_RATING = 3.5
TEST_FRACTION = 0.2
MIN_POSITIVES = 5
FILES = ("ratings.csv", "movies.csv", "tags.csv")


@dataclass(frozen=True)
class MovieLens:
    """The three CSVs, ids as strings like the warehouse's."""

    ratings: pd.DataFrame  # user_id, item_id, rating, timestamp
    movies: pd.DataFrame  # item_id, title, categories (MovieLens genres, already 'A|B')
    tags: pd.DataFrame  # user_id, item_id, tag, timestamp


@dataclass(frozen=True)
class MovieLensSplit:
    """The protocol's train and test positives (user_id, item_id, timestamp)."""

    train: pd.DataFrame
    test: pd.DataFrame


def load_movielens(directory: str | Path) -> MovieLens:
    """Reads `ratings.csv`, `movies.csv` and `tags.csv` from `directory`.

    Raises FileNotFoundError naming the folder and the files it lacks.
    """
    import pandas as pd

    folder = Path(directory)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} has no {missing}: expected MovieLens ml-latest-small")
    ids = {"userId": str, "movieId": str}
    ratings = pd.read_csv(folder / "ratings.csv", dtype=ids)
    movies = pd.read_csv(folder / "movies.csv", dtype=ids)
    tags = pd.read_csv(folder / "tags.csv", dtype={**ids, "tag": str})
    names = {"userId": "user_id", "movieId": "item_id", "genres": "categories"}
    return MovieLens(
        ratings=ratings.rename(columns=names),
        # "(no genres listed)" is MovieLens saying it has no category.
        movies=movies.rename(columns=names).replace({"categories": {"(no genres listed)": None}}),
        tags=tags.rename(columns=names),
    )


def movielens_split(
    data: MovieLens,
    *,
    positive_rating: float = POSITIVE_RATING,
    test_fraction: float = TEST_FRACTION,
    min_positives: int = MIN_POSITIVES,
) -> MovieLensSplit:
    """The protocol's split of the positives: each user's latest positives are test, by time."""
    from pmg_tasks.preferences.evaluate import temporal_holdout

    positives = data.ratings.loc[
        data.ratings["rating"] >= positive_rating, ["user_id", "item_id", "timestamp"]
    ]
    train, test = temporal_holdout(positives, test_fraction, min_interactions=min_positives)
    test = test[test["item_id"].isin(set(train["item_id"]))]
    return MovieLensSplit(train=train.reset_index(drop=True), test=test.reset_index(drop=True))


def user_tag_keywords(data: MovieLens, per_user: int = 8):
    """`user_id`, `preference_keywords`: each user's most used tags, the keywords stage's shape.

    MovieLens has no keyword stage; the tags users wrote are the closest thing to their own words.
    """
    import pandas as pd

    tags = data.tags.assign(tag=data.tags["tag"].str.strip().str.lower()).dropna(subset=["tag"])
    counts = tags.groupby(["user_id", "tag"]).size().rename("n").reset_index()
    counts = counts.sort_values(["user_id", "n", "tag"], ascending=[True, False, True])
    top = counts.groupby("user_id").head(per_user).groupby("user_id")["tag"].agg(list)
    return pd.DataFrame({"user_id": top.index, "preference_keywords": top.to_numpy()})


def positive_events(data: MovieLens, positive_rating: float = POSITIVE_RATING):
    """The protocol's positives as events (`user_id`, `item_id`, `event_type`, `event_ts`): one view per
    positive, so an evaluation reads MovieLens the way it reads a warehouse."""
    import pandas as pd

    positives = data.ratings[data.ratings["rating"] >= positive_rating]
    return pd.DataFrame(
        {
            "user_id": positives["user_id"].to_numpy(),
            "item_id": positives["item_id"].to_numpy(),
            "event_type": "view",
            "event_ts": pd.to_datetime(positives["timestamp"].to_numpy(), unit="s"),
        }
    )
