"""A new user's first night: a retail catalog (titles with brands, descriptions, no categories) and its
purchase log, imported through `pmg import items` and `pmg import events`, run through Airflow with
`pmg run`. No missing value becomes a word anywhere, and the catalog keywords say what the products are."""

from __future__ import annotations

import csv
import datetime as dt
import html
import re

import numpy as np
import pytest
import yaml

from pmg_tasks.cli import main
from pmg_tasks.layout import report_key, run_key
from pmg_tasks.settings import Settings
from pmg_tasks.store import open_store, read_frame

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

DS = "2026-11-20"
# (brand, what the product is, the rest of its title): a tools-and-making shop, as a public catalog has it.
PRODUCTS = [
    ("Wilton", "Bench Vise", "11106, 6-Inch Jaw Width"),
    ("HATCHBOX", "PLA 3D Printer Filament", "1.75 mm, 1 kg Spool, Black"),
    ("Overture", "PETG 3D Printer Filament", "1.75mm, 1kg"),
    ("Stanley", "Claw Hammer", "16 oz, Fiberglass Handle"),
    ("DEWALT", "Cordless Drill", "20V MAX (DCD771C2)"),
    ("Irwin", "Locking Pliers", "10-Inch, Curved Jaw"),
    ("Bosch", "Laser Measure", "165 ft, Backlit Display"),
    ("Makita", "Orbital Sander", "5-Inch, Variable Speed"),
    ("Gorilla", "Wood Glue", "8 oz Bottle"),
    ("Klein Tools", "Wire Stripper", "Heavy Duty, 10-18 AWG"),
    ("Milwaukee", "Impact Driver", "M18 Fuel, Brushless"),
    ("Fluke", "Digital Multimeter", "True RMS"),
]
DESCRIPTIONS = ["Built for the workshop.", "nan", "", "None", "A reliable tool for makers."]
NULL_WORD = re.compile(r"\b(?:nan|null|none)\b", re.IGNORECASE)


def write_catalog(path) -> list[dict]:
    rows = []
    for i, (brand, noun, rest) in enumerate(PRODUCTS):
        rows.append({
            "asin": f"B0{i:04d}XYZ",
            "product_title": f"{brand} {noun}, {rest}" if i % 3 else f"{brand} {rest.split(',')[0]} {noun}",
            "about": DESCRIPTIONS[i % len(DESCRIPTIONS)],
            "brand": brand,
            "price": f"{10 + i * 3}.99",
        })
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def write_purchases(path, catalog: list[dict]) -> None:
    """Purchases and glances of 30 customers over the week ending at DS, each leaning towards a few products."""
    rng = np.random.default_rng(7)
    first = dt.datetime.fromisoformat(DS) - dt.timedelta(days=6)
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["order_id", "customer", "asin", "kind", "order_time"])
        order = 0
        for customer in range(30):
            liked = rng.choice(len(catalog), 4, replace=False)
            for _ in range(6):
                item = catalog[int(rng.choice(liked))]["asin"]
                moment = first + dt.timedelta(minutes=int(rng.integers(0, 7 * 24 * 60)))
                order += 1
                kind = "order" if rng.random() < 0.5 else "glance"
                writer.writerow([f"o{order}", f"C{customer:03d}", item, kind, moment.isoformat()])


def test_a_retail_catalog_runs_end_to_end_and_reads_like_its_products(tmp_path, test_size_models, monkeypatch, capsys):
    home = tmp_path / "pmg"
    monkeypatch.setenv("PMG_HOME", str(home))
    for role, path in test_size_models.model_dump().items():
        monkeypatch.setenv(f"PMG_MODELS__{role.upper()}", path)
    monkeypatch.setenv("PMG_RETRIES__PER_TASK", "0")  # a broken stage fails in seconds, not after backoff
    monkeypatch.setenv("PMG_KEYWORDS__SCENARIO", "product_banners")

    catalog = write_catalog(tmp_path / "products.csv")
    write_purchases(tmp_path / "purchases.csv", catalog)
    assert main(["import", "items", str(tmp_path / "products.csv"), "--map",
                 "item_id=asin,title=product_title,description=about,brand=brand,price=price"]) == 0
    imported = capsys.readouterr().out
    assert f"{len(PRODUCTS)} items written" in imported and "rejected: none" in imported
    assert "PMG_KEYWORDS__SCENARIO=product_banners" in imported
    assert main(["import", "events", str(tmp_path / "purchases.csv"), "--map",
                 "event_id=order_id,user_id=customer,item_id=asin,event_type=kind,event_ts=order_time",
                 "--types", "purchase=order,view=glance"]) == 0
    capsys.readouterr()

    campaigns = tmp_path / "campaigns.yaml"
    campaigns.write_text(yaml.safe_dump({"campaigns": [{
        "campaign_id": "workshop-week", "name": "Workshop week", "start_date": "2026-11-01", "end_date": "2026-11-30",
        "target_items": [catalog[0]["asin"], catalog[1]["asin"]], "audience": {"max_users": 6}, "variants": 1,
        "alpha": 0.5, "style": "clean product banner",
    }]}))

    assert main(["run", "--ds", DS, "--campaigns", str(campaigns)]) == 0, capsys.readouterr().err
    assert "Done:" in capsys.readouterr().out

    store = open_store(Settings(home=home))
    histories = read_frame(store, run_key(DS, "histories.parquet"))
    keywords = read_frame(store, run_key(DS, "keywords.parquet"))
    item_keywords = read_frame(store, run_key(DS, "item_keywords.parquet")).set_index("item_id")["keywords"]
    requests = read_frame(store, run_key(DS, "requests.parquet"))
    generations = read_frame(store, run_key(DS, "generations.parquet"))
    headlines = read_frame(store, run_key(DS, "headlines.parquet"))
    report = html.unescape(re.sub(r"<[^>]+>", " ", store.get_bytes(report_key(DS)).decode()))
    assert len(histories) == 30 and len(requests) > 0

    texts = [*histories["history_text"], *(w for ws in keywords["preference_keywords"] for w in ws),
             *(w for ws in item_keywords for w in ws), *generations["prompt"], *generations["negative_prompt"],
             *requests["preference_text"], *generations["target_text"], *headlines["headline"]]
    for text in texts:
        assert not NULL_WORD.search(text), text
    assert "(uncategorised)" not in "".join(histories["history_text"])
    assert not re.search(r"\b(?:nan|null|None|NaN)\b", report), re.findall(r".{40}\b(?:nan|null|None|NaN)\b.{40}", report)

    # What the products are, from their titles, ahead of who made them.
    assert list(item_keywords[catalog[0]["asin"]])[0] == "bench vise"
    assert "3d printer filament" in list(item_keywords[catalog[1]["asin"]])
    for row in catalog:
        title_words = set(re.findall(r"[\w-]+", row["product_title"].lower())) - {row["brand"].lower()}
        words = list(item_keywords[row["asin"]])
        assert any(set(w.split()) <= title_words for w in words), (row["product_title"], words)
    assert any("bench vise" in prompt for prompt in generations["prompt"])
