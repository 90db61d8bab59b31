"""The item catalog importer: a column mapping onto title, description, categories and attributes, images
copied into the store, idempotent upserts, bytes read leniently, and every rejected row reported with its
reason (the importers' bad-input corpus)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pmg_tasks.cli import main
from pmg_tasks.importers import ImportDataError, import_events_file, import_items_file, parse_item_mapping
from pmg_tasks.importers.items_file import describe_import
from pmg_tasks.keywords.scenario import suggest_scenario
from pmg_tasks.layout import item_image_key
from pmg_tasks.store import LocalStore
from pmg_tasks.warehouse import ITEM_COLUMNS, Warehouse

MAPPING = "item_id=sku,title=name,description=about,brand=maker,categories=cats,image=picture,attributes=meta"
HEADER = b"sku,name,about,maker,cats,picture,meta"


@pytest.fixture
def warehouse(tmp_path):
    with Warehouse(f"duckdb:///{tmp_path / 'wh.duckdb'}") as wh:
        yield wh


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "vise.png")
    Image.new("RGB", (8, 8), (10, 10, 200)).save(folder / "spool.jpg", format="JPEG")
    (folder / "notes.png").write_bytes(b"not an image at all")
    (folder / "cut.png").write_bytes(_png()[:-20])  # an upload cut short: the header reads, the pixels do not
    return folder


def items_of(warehouse) -> dict[str, dict]:
    rows = warehouse.fetch_rows(f"SELECT {', '.join(ITEM_COLUMNS)} FROM items ORDER BY item_id")
    return {row[0]: dict(zip(ITEM_COLUMNS, row, strict=True)) for row in rows}


def write_csv(path, *lines: bytes) -> None:
    path.write_bytes(b"\n".join([HEADER, *lines]) + b"\n")


# The importers' bad-input corpus: (line, rule that rejects it, words its reason holds). Rows that only need
# cleaning are below it; each is imported.
BAD_ROWS = [
    (b",No Id,,,,,", "item_id_missing", "item_id is empty"),
    (b"nan,NaN Id,,,,,", "item_id_missing", "item_id is empty"),
    (b"B010,,,Acme,,,", "title_missing", "title is empty"),
    (b"B011,None,,Acme,,,", "title_missing", "title is empty"),
    (b"B012,null,,Acme,,,", "title_missing", "title is empty"),
    (b"B001,Duplicate Vise,,Wilton,,,", "duplicate_item_id", "already in row 1 of the file"),
    (b"B013,Missing Picture,,,,images/absent.png,", "image_unreadable", "no file"),
    (b"B014,Not A Picture,,,,images/notes.png,", "image_unreadable", "not an image"),
    (b"B019,Cut Picture,,,,images/cut.png,", "image_unreadable", "is damaged"),
    (b"B015,Web Picture,,,,https://example.com/a.png,", "image_unreadable", "fetches nothing over the network"),
    (b"B016,Outside The Store,,,,../../etc/passwd,", "image_unreadable", "no file"),
    (b'B017,Bad Attributes,,,,,{oops', "attributes_not_json", "{oops is not a JSON object"),
    (b'B018,List Attributes,,,,,"[1, 2]"', "attributes_not_json", "is not a JSON object"),
]
GOOD_ROWS = [
    b"B001,Wilton 11106 Bench Vise,Cast iron vise,Wilton,,images/vise.png,",
    b'B002,HATCHBOX PLA 3D Printer Filament,nan,HATCHBOX,Printing|nan| Filament ,images/spool.jpg,'
    b'"{""color"": ""black"", ""size"": null}"',
    b"B003,Caf\xe9 Mug \xff,None,null,Kitchen,,",  # Latin-1 bytes in a UTF-8 file
    b"B004,Claw Hammer,<b>Steel</b>,Stanley,Tools|Hand Tools,,",
]


def test_a_catalog_is_imported_cleaned_and_every_rejected_row_has_its_reason(tmp_path, warehouse, store, images):
    path = tmp_path / "catalog.csv"
    write_csv(path, *GOOD_ROWS, *(line for line, _, _ in BAD_ROWS))

    result = import_items_file(warehouse, path, MAPPING, store=store, rejected_path=tmp_path / "rejected.csv")

    assert result["rows"] == len(GOOD_ROWS) + len(BAD_ROWS)
    assert result["items_written"] == len(GOOD_ROWS)
    expected = {}
    for _, rule, _ in BAD_ROWS:
        expected[rule] = expected.get(rule, 0) + 1
    assert {k: v for k, v in result["rejected"].items() if v} == expected
    examples = {e["row"]: e for e in result["rejected_examples"]}
    rejected_rows = (tmp_path / "rejected.csv").read_text().splitlines()
    assert len(rejected_rows) == 1 + len(BAD_ROWS)
    for offset, (_, rule, words) in enumerate(BAD_ROWS):
        row = len(GOOD_ROWS) + 1 + offset
        if row in examples:
            assert examples[row]["rule"] == rule and words in examples[row]["reason"], examples[row]
        assert any(line.startswith(f"{row},") and rule in line and words in line for line in rejected_rows)

    items = items_of(warehouse)
    assert sorted(items) == ["B001", "B002", "B003", "B004"]
    assert items["B001"]["title"] == "Wilton 11106 Bench Vise"
    assert json.loads(items["B001"]["attributes"]) == {"brand": "Wilton"}
    assert items["B001"]["categories"] is None
    assert items["B001"]["image_uri"] == item_image_key("B001", "png")
    assert store.get_bytes(items["B001"]["image_uri"]) == (images / "vise.png").read_bytes()
    assert items["B002"]["image_uri"] == "catalog/images/B002.jpg"
    assert items["B002"]["categories"] == "Printing|Filament"
    assert items["B002"]["description"] is None  # "nan" is no description
    assert json.loads(items["B002"]["attributes"]) == {"brand": "HATCHBOX", "color": "black"}
    assert items["B003"]["title"] == "Caf\ufffd Mug \ufffd" and items["B003"]["attributes"] is None
    assert items["B004"]["description"] == "<b>Steel</b>"  # kept as given: extraction cleans text
    assert result["cleaned"]["invalid_utf8_replaced"] == {"name": 1}
    assert result["cleaned"]["missing_values_to_null"] == {"item_id": 1, "title": 2, "description": 2}
    assert result["images_copied"] == 2

    summary = describe_import(result)
    assert "rejected 13 rows" in summary and "duplicate_item_id" in summary and "U+FFFD" in summary
    assert "PMG_KEYWORDS__SCENARIO=product_banners" in summary


def test_importing_the_same_catalog_again_changes_nothing_and_a_new_version_replaces(tmp_path, warehouse, store,
                                                                                    images):
    path = tmp_path / "catalog.csv"
    write_csv(path, *GOOD_ROWS)
    import_items_file(warehouse, path, MAPPING, store=store)
    first = items_of(warehouse)
    keys = store.list_keys("catalog/")
    again = import_items_file(warehouse, path, MAPPING, store=store)
    assert items_of(warehouse) == first and store.list_keys("catalog/") == keys
    assert again["items_written"] == len(GOOD_ROWS)  # upserted: replaced by the same values

    write_csv(path, b"B001,Wilton Bench Vise (new title),,Wilton,Tools,,")
    import_items_file(warehouse, path, MAPPING, store=store)
    items = items_of(warehouse)
    assert len(items) == 4 and items["B001"]["title"] == "Wilton Bench Vise (new title)"
    assert items["B001"]["categories"] == "Tools" and items["B001"]["image_uri"] is None


def test_parquet_lists_numbers_and_structs_map_onto_categories_and_attributes(tmp_path, warehouse, store):
    store.put_bytes("uploads/mug.png", _png())
    table = pa.table(
        {
            "id": ["p1", "p2", "p3"],
            "name": ["Linen Shirt", "Slim Jeans", "Wool Coat"],
            "tags": pa.array([["Tops", "nan", "Men|Summer"], [], None], pa.list_(pa.string())),
            "weight_kg": [0.2, None, 1.5],
            "specs": pa.array([{"color": "white", "fit": None}, {"color": "blue", "fit": "slim"}, None],
                              pa.struct([("color", pa.string()), ("fit", pa.string())])),
            "img": ["uploads/mug.png", None, None],
            "raw": pa.array([b"ok", b"bad \xff", None], pa.binary()),
        }
    )
    path = tmp_path / "catalog.parquet"
    pq.write_table(table, path)

    result = import_items_file(
        warehouse, path, "item_id=id,title=name,categories=tags,weight=weight_kg,attributes=specs,image=img,"
        "note=raw", store=store,
    )

    items = items_of(warehouse)
    assert items["p1"]["categories"] == "Tops|Men/Summer"
    assert items["p2"]["categories"] is None and items["p3"]["categories"] is None
    assert json.loads(items["p1"]["attributes"]) == {"color": "white", "weight": 0.2, "note": "ok"}
    assert json.loads(items["p2"]["attributes"]) == {"color": "blue", "fit": "slim", "note": "bad \ufffd"}
    assert json.loads(items["p3"]["attributes"]) == {"weight": 1.5}
    assert items["p1"]["image_uri"] == "catalog/images/p1.png"
    assert result["cleaned"]["invalid_utf8_replaced"] == {"raw": 1}
    assert result["scenario"]["suggested"] == "fashion"


def test_json_lines_take_a_list_or_delimited_text_as_categories(tmp_path, warehouse):
    path = tmp_path / "catalog.jsonl"
    lines = [
        {"item_id": "j1", "title": "Toy Story (1995)", "categories": ["Animation", "Children"],
         "attributes": {"era": "1990s"}, "director": "John Lasseter"},
        {"item_id": "j2", "title": "Heat (1995)", "categories": "Action;Crime", "attributes": None},
        {"item_id": "j3", "title": "Alien (1979)", "categories": None, "attributes": {"era": "1970s"}},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")

    result = import_items_file(warehouse, path, "director=director", categories_delimiter=";")

    items = items_of(warehouse)
    assert items["j1"]["categories"] == "Animation|Children" and items["j2"]["categories"] == "Action|Crime"
    assert json.loads(items["j1"]["attributes"]) == {"era": "1990s", "director": "John Lasseter"}
    assert items["j2"]["attributes"] is None
    assert result["scenario"] == {"suggested": "movie_posters", "why": "3 of 3 items read like movies"}


def test_invalid_utf8_and_other_encodings_are_read_leniently_by_both_importers(tmp_path, warehouse, store):
    items = tmp_path / "catalog.csv"
    items.write_bytes(b"item_id,title,description\nx1,Caf\xe9,\xff\xfe broken\nx2,Fine,Fine\n")
    result = import_items_file(warehouse, items, store=store)
    assert result["cleaned"]["invalid_utf8_replaced"] == {"title": 1, "description": 1}
    assert items_of(warehouse)["x1"]["title"] == "Caf\ufffd"

    events = tmp_path / "clicks.csv"
    events.write_bytes(b"user_id,item_id,event_type,event_ts\nu\xe91,x1,view,1763632800\nu2,x2,view,1763632800\n")
    counted = import_events_file(warehouse, events)
    assert counted["invalid_utf8_replaced"] == {"user_id": 1} and counted["events_inserted"] == 2
    users = {r[0] for r in warehouse.fetch_rows("SELECT user_id FROM events")}
    assert users == {"u\ufffd1", "u2"}

    latin = tmp_path / "latin.csv"
    latin.write_bytes("item_id,title\nx3,Crème brûlée torch\n".encode("cp1252"))
    decoded = import_items_file(warehouse, latin, store=store, encoding="cp1252")
    assert decoded["cleaned"]["invalid_utf8_replaced"] == {}
    assert items_of(warehouse)["x3"]["title"] == "Crème brûlée torch"


def test_mapping_errors_name_the_fix(tmp_path, warehouse, store):
    path = tmp_path / "catalog.csv"
    path.write_text("sku,name\n1,Vise\n")
    with pytest.raises(ImportDataError, match=r"no column for title: map one with --map title=COLUMN"):
        import_items_file(warehouse, path, "item_id=sku", store=store)
    with pytest.raises(ImportDataError, match=r"column 'nom' \(mapped to title\) is not in catalog.csv"):
        import_items_file(warehouse, path, "item_id=sku,title=nom", store=store)
    with pytest.raises(ImportDataError, match="did you mean 'title'"):
        parse_item_mapping("item_id=sku,titel=name")
    with pytest.raises(ImportDataError, match="attribute name"):
        parse_item_mapping("item_id=sku,title=name,brand'); DROP TABLE items; --=x")
    with pytest.raises(ImportDataError, match="needs an object store"):
        import_items_file(warehouse, path, "item_id=sku,title=name,image=name")
    with pytest.raises(ImportDataError, match="unknown encoding"):
        import_items_file(warehouse, path, "item_id=sku,title=name", store=store, encoding="klingon")


def test_the_cli_prints_what_was_imported_cleaned_rejected_and_the_scenario(tmp_path, monkeypatch, capsys, images):
    path = tmp_path / "catalog.csv"
    write_csv(path, *GOOD_ROWS, BAD_ROWS[5][0])
    monkeypatch.setenv("PMG_HOME", str(tmp_path / "home"))

    assert main(["import", "items", str(path), "--map", MAPPING]) == 0
    out = capsys.readouterr().out
    assert "4 items written" in out and "duplicate_item_id" in out and "row 5: item_id already in row 1" in out
    assert "PMG_KEYWORDS__SCENARIO=product_banners" in out and "scenario in force is movie_posters" in out
    assert (tmp_path / "home" / "store" / "catalog" / "images" / "B001.png").is_file()
    assert main(["import", "items", str(path), "--map", MAPPING, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rejected"]["duplicate_item_id"] == 1
    assert main(["import", "items", str(path), "--map", "item_id=sku"]) == 2
    assert "title=COLUMN" in capsys.readouterr().err


def test_scenario_suggestions():
    assert suggest_scenario([("Heat (1995)", "Action|Crime"), ("Brazil (1985)", None)])[0] == "movie_posters"
    assert suggest_scenario([("Linen Shirt", None), ("Leather Boots", "Shoes"), ("Tote", None)])[0] == "fashion"
    assert suggest_scenario([("Wilton Bench Vise", None), ("Cordless Drill", "Tools")])[0] == "product_banners"
    assert suggest_scenario([])[0] == "product_banners"


@pytest.mark.integration
def test_postgres_items_stream_through_copy_and_are_idempotent(tmp_path, postgres_url, store, images):
    path = tmp_path / "catalog.csv"
    write_csv(path, *GOOD_ROWS, BAD_ROWS[5][0], b"B005,Nul \x00 Title,,,,,")  # NUL: PostgreSQL text cannot hold it
    with Warehouse(postgres_url) as warehouse:
        first = import_items_file(warehouse, path, MAPPING, store=store)
        second = import_items_file(warehouse, path, MAPPING, store=store)
        items = items_of(warehouse)
    assert first["items_written"] == second["items_written"] == 5 and len(items) == 5
    assert first["rejected"]["duplicate_item_id"] == 1
    assert json.loads(items["B002"]["attributes"]) == {"brand": "HATCHBOX", "color": "black"}
    assert items["B003"]["title"] == "Caf\ufffd Mug \ufffd" and items["B005"]["title"] == "Nul \ufffd Title"
    assert items["B001"]["image_uri"] == "catalog/images/B001.png"


def _png() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 200, 0)).save(buffer, format="PNG")
    return buffer.getvalue()
