"""A synthetic clickstream: an item catalog, users with latent tastes, and sessions of events.

The shape follows real shops: most sessions only view, some click, fewer add to cart, fewer buy; users come
back on some days and not others; dwell time is long-tailed. A small, known share of rows is broken the
way real feeds break (unknown items, negative dwell, duplicate ids) so validation has something to stop.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

GENRES = ["Action", "Comedy", "Drama", "Sci-Fi", "Horror", "Romance", "Animation", "Documentary"]
ERAS = ["1970s", "1980s", "1990s", "2000s", "2010s", "2020s"]
MOODS = ["dark", "uplifting", "tense", "whimsical", "melancholic", "energetic"]
STYLES = ["noir", "neon", "pastel", "gritty", "minimalist", "retro", "epic"]
COUNTRIES = ["USA", "France", "Japan", "India", "Korea", "UK", "Brazil"]
TITLE_ADJECTIVES = ["Silent", "Crimson", "Last", "Hidden", "Electric", "Golden", "Broken", "Midnight",
                    "Wild", "Frozen", "Burning", "Lost", "Distant", "Velvet", "Iron", "Paper"]
TITLE_NOUNS = ["Harbor", "Empire", "Garden", "Signal", "Voyage", "Frontier", "Machine", "Orchard",
               "Kingdom", "Mirror", "Station", "Letter", "Storm", "River", "Circus", "Horizon"]

EVENT_FUNNEL = [("view", 1.0), ("click", 0.45), ("add_to_cart", 0.35), ("purchase", 0.5)]


@dataclass(frozen=True)
class SyntheticShop:
    items: pd.DataFrame
    users: pd.DataFrame
    events: pd.DataFrame


def make_catalog(n_items: int, rng: np.random.Generator) -> pd.DataFrame:
    main_genre = rng.integers(0, len(GENRES), n_items)
    second_genre = rng.integers(0, len(GENRES), n_items)
    rows = []
    for i in range(n_items):
        genres = [GENRES[main_genre[i]]]
        if second_genre[i] != main_genre[i] and rng.random() < 0.5:
            genres.append(GENRES[second_genre[i]])
        title = f"The {TITLE_ADJECTIVES[rng.integers(16)]} {TITLE_NOUNS[rng.integers(16)]}"
        attributes = {
            "era": ERAS[rng.integers(len(ERAS))],
            "mood": MOODS[(main_genre[i] + rng.integers(0, 2)) % len(MOODS)],
            "style": STYLES[(main_genre[i] * 2 + rng.integers(0, 2)) % len(STYLES)],
            "country": COUNTRIES[rng.integers(len(COUNTRIES))],
        }
        rows.append(
            {
                "item_id": f"m{i:05d}",
                "title": title,
                "categories": "|".join(genres),
                "description": f"A {attributes['mood']} {genres[0].lower()} story from the {attributes['era']}, "
                f"shot in a {attributes['style']} style in {attributes['country']}.",
                "attributes": json.dumps(attributes, sort_keys=True),
                "image_uri": None,
                "updated_at": pd.Timestamp("2026-01-01"),
            }
        )
    return pd.DataFrame(rows)


# Each genre has its colours and each style its pattern, so an item's picture says what it is to the image
# view of the preference graph and to the token embeddings, the way a real poster or product shot would.
GENRE_COLOURS = {
    "Action": ((200, 40, 30), (250, 170, 40)), "Comedy": ((250, 210, 60), (60, 160, 230)),
    "Drama": ((90, 40, 90), (200, 170, 150)), "Sci-Fi": ((20, 30, 90), (40, 220, 230)),
    "Horror": ((20, 10, 10), (150, 0, 0)), "Romance": ((240, 120, 160), (255, 230, 235)),
    "Animation": ((60, 200, 90), (250, 120, 30)), "Documentary": ((110, 110, 100), (230, 225, 210)),
}  # fmt: skip
MOOD_BRIGHTNESS = {"dark": 0.55, "uplifting": 1.15, "tense": 0.8, "whimsical": 1.1, "melancholic": 0.7,
                   "energetic": 1.2}


def item_picture(categories: str, attributes: dict, size: int = 64) -> bytes:
    """A small PNG of an item: its genre's colours, its style's pattern, its mood's brightness."""
    import io

    from PIL import Image, ImageDraw, ImageEnhance

    genre = categories.split("|")[0]
    background, accent = GENRE_COLOURS.get(genre, ((128, 128, 128), (220, 220, 220)))
    picture = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(picture)
    style, step = attributes.get("style", ""), max(4, size // 8)
    if style in ("noir", "gritty"):
        for x in range(0, size, step):
            draw.line([(x, 0), (x + size // 2, size)], fill=accent, width=2)
    elif style in ("neon", "retro"):
        for r in range(step, size, step):
            draw.ellipse([size // 2 - r, size // 2 - r, size // 2 + r, size // 2 + r], outline=accent, width=2)
    elif style in ("pastel", "minimalist"):
        draw.rectangle([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill=accent)
    else:  # epic
        draw.polygon([(0, size), (size // 2, size // 6), (size, size)], fill=accent)
    second = categories.split("|")[1] if "|" in categories else ""
    if second in GENRE_COLOURS:  # a second genre shows as a band along the bottom
        draw.rectangle([0, size - size // 6, size, size], fill=GENRE_COLOURS[second][1])
    picture = ImageEnhance.Brightness(picture).enhance(MOOD_BRIGHTNESS.get(attributes.get("mood", ""), 1.0))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def write_item_images(store, items: pd.DataFrame) -> pd.DataFrame:
    """Draws every item's picture into the store and returns the items with `image_uri` naming it."""
    from pmg_tasks.layout import item_image_key

    keys = []
    for item_id, categories, attributes in zip(items["item_id"], items["categories"], items["attributes"], strict=True):
        key = item_image_key(item_id)
        store.put_bytes(key, item_picture(categories, json.loads(attributes)))
        keys.append(key)
    return items.assign(image_uri=keys)


def make_events(
    items: pd.DataFrame, n_users: int, first_day: dt.date, days: int, rng: np.random.Generator,
    sessions_per_user_day: float = 0.6, bad_fraction: float = 0.002,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events for `days` days from `first_day`, vectorised so ten million rows take seconds."""
    n_items = len(items)
    item_genre = np.array([GENRES.index(c.split("|")[0]) for c in items["categories"]])
    # Latent taste: each user leans towards two or three genres.
    tastes = rng.dirichlet(np.full(len(GENRES), 0.3), n_users)
    genre_items = [np.flatnonzero(item_genre == g) for g in range(len(GENRES))]

    sessions_per_day = rng.poisson(sessions_per_user_day, (days, n_users))
    session_day, session_user = np.nonzero(sessions_per_day)
    repeat = sessions_per_day[session_day, session_user]
    session_day = np.repeat(session_day, repeat)
    session_user = np.repeat(session_user, repeat)
    n_sessions = len(session_user)

    views_per_session = 1 + rng.poisson(3, n_sessions)
    event_session = np.repeat(np.arange(n_sessions), views_per_session)
    event_user = session_user[event_session]
    # Pick a genre from the user's taste, then an item of that genre (inverse CDF, vectorised).
    cdf = np.cumsum(tastes[event_user], axis=1)
    genre = (rng.random(len(event_user))[:, None] > cdf).sum(axis=1).clip(0, len(GENRES) - 1)
    item = np.empty(len(event_user), dtype=np.int64)
    for g in range(len(GENRES)):
        at = genre == g
        pool = genre_items[g] if len(genre_items[g]) else np.arange(n_items)
        item[at] = pool[rng.integers(0, len(pool), at.sum())]

    session_start = rng.uniform(0, 86_400 - 3_600, n_sessions)
    offset_in_session = rng.uniform(0, 1_800, len(event_session))
    base_ts = np.datetime64(first_day.isoformat(), "us")
    view_ts = (
        base_ts
        + (session_day[event_session] * 86_400 * 1_000_000).astype("timedelta64[us]")
        + ((session_start[event_session] + offset_in_session) * 1_000_000).astype("timedelta64[us]")
    )

    # The funnel: every view may lead on, a little later, to the next step.
    types, users, item_ids, sessions, stamps = [], [], [], [], []
    alive = np.ones(len(event_user), dtype=bool)
    ts = view_ts
    for step, (event_type, p_continue) in enumerate(EVENT_FUNNEL):
        if step:
            alive &= rng.random(len(alive)) < p_continue
            ts = ts + (rng.uniform(5, 120, len(ts)) * 1_000_000).astype("timedelta64[us]")
        types.append(np.full(alive.sum(), event_type, dtype=object))
        users.append(event_user[alive])
        item_ids.append(item[alive])
        sessions.append(event_session[alive])
        stamps.append(ts[alive])

    user_idx = np.concatenate(users)
    n = len(user_idx)
    events = pd.DataFrame(
        {
            "user_id": _ids("u", user_idx, 6),
            "item_id": items["item_id"].to_numpy()[np.concatenate(item_ids)],
            "session_id": np.char.add("s", np.concatenate(sessions).astype(str)),
            "event_type": np.concatenate(types),
            "event_ts": np.concatenate(stamps),
            "dwell_seconds": np.round(rng.lognormal(3.0, 1.0, n), 2),
        }
    ).sort_values(["event_ts", "session_id"], kind="stable", ignore_index=True)
    events.insert(0, "event_id", _ids(f"e{first_day:%Y%m%d}-", np.arange(n), 9))
    _break_a_few(events, items, bad_fraction, rng)

    users_frame = pd.DataFrame(
        {
            "user_id": _ids("u", np.arange(n_users), 6),
            "created_at": pd.Timestamp(first_day) - pd.Timedelta(days=30),
            "country": np.array(COUNTRIES)[rng.integers(0, len(COUNTRIES), n_users)],
        }
    )
    return events, users_frame


def _ids(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    return np.char.add(prefix, np.char.zfill(numbers.astype(str), width)).astype(object)


def _break_a_few(events: pd.DataFrame, items: pd.DataFrame, fraction: float, rng: np.random.Generator) -> None:
    """Real feeds carry some junk; keep it well under the 1% that stops a run."""
    n_bad = int(len(events) * fraction)
    if n_bad == 0:
        return
    rows = rng.choice(len(events), n_bad, replace=False)
    kinds = rows % 3
    events.loc[rows[kinds == 0], "item_id"] = "m-deleted"
    events.loc[rows[kinds == 1], "dwell_seconds"] = -1.0
    duplicate_of = rows[kinds == 2]
    events.loc[duplicate_of, "event_id"] = events.loc[(duplicate_of + 1) % len(events), "event_id"].to_numpy()


def make_shop(n_users: int, n_items: int, last_day: dt.date, days: int, seed: int = 0,
              bad_fraction: float = 0.002) -> SyntheticShop:
    rng = np.random.default_rng(seed)
    items = make_catalog(n_items, rng)
    first_day = last_day - dt.timedelta(days=days - 1)
    events, users = make_events(items, n_users, first_day, days, rng, bad_fraction=bad_fraction)
    return SyntheticShop(items=items, users=users, events=events)


def demo_campaign_files(shop: SyntheticShop, last_day: dt.date) -> dict[str, str]:
    """Two campaign files (name -> YAML) over the most viewed items, active around the seeded days."""
    popular = shop.events["item_id"].value_counts().index
    popular = [i for i in popular if i in set(shop.items["item_id"])]
    start, end = last_day - dt.timedelta(days=30), last_day + dt.timedelta(days=30)
    header = "# A campaign marketing ops schedule; the file name is its id. Fields: docs/campaigns.md.\n"
    return {
        "winter-classics.yaml": header + f"""\
name: Winter classics
start_date: {start}
end_date: {end}
target_items: [{popular[0]}, {popular[1]}]
audience: {{max_users: 12}}
variants: 1
alpha: 0.6
style: cinematic poster
denylist: [gore, violence]
priority: 10
review: none
""",
        "sci-fi-weekend.yaml": header + f"""\
name: Sci-fi weekend
start_date: {start}
end_date: {end}
target_items: [{popular[2]}]
audience: {{categories: [Sci-Fi, Action], max_users: 8}}
variants: 2
candidates: 3
alpha: 0.4
style: neon, retro-futurist
priority: 5
review: none
""",
    }


def seed_warehouse(warehouse, shop: SyntheticShop) -> dict[str, int]:
    """Write the shop through the DDL in sql/; replaces what the demo seeded before, so seeding is
    repeatable, and refuses (DemoWarehouseInUse) a warehouse that holds anything else."""
    from pmg_tasks.demo.ownership import check_demo_may_seed, record_demo_seed

    warehouse.apply_ddl()
    check_demo_may_seed(warehouse)
    counts = {}
    for table, frame in (("items", shop.items), ("users", shop.users), ("events", shop.events)):
        warehouse.execute(f"DELETE FROM {table}")
        counts[table] = warehouse.insert_frame(table, frame)
    record_demo_seed(warehouse)
    return counts
