"""Import an item catalog (CSV, Parquet or JSON Lines) into the warehouse's items table, through a column mapping.

    pmg import items products.csv --map item_id=sku,title=name,description=about,brand=brand,image=picture

- `--map TARGET=SOURCE,...` names the file's column for each target. A column the file already calls by the
  target's name needs no mapping. Targets:
    item_id, title      required
    description         text
    categories          a list (Parquet or JSON list), or text split at `--categories-delimiter` (default |)
    attributes          a column that holds a JSON object (text, JSON or a struct)
    image               a local image file (absolute, or relative to `--images-dir`, default: the file's
                        folder) or a key in the object store; copied into the store under
                        catalog/images/<item_id>.<ext>, and `image_uri` names that key
    updated_at          a timestamp (epoch numbers in `--ts-unit`, or ISO-8601 text)
  Any other target names an attribute: `brand=Manufacturer` puts the Manufacturer column into the
  attributes JSON as "brand" (numbers stay numbers). A target that looks like a misspelt one ("titel")
  is refused rather than made an attribute.
- Cleaning, counted in the result: bytes that are not UTF-8 become U+FFFD (per file column); text that only
  spells a missing value ("", "nan", "None", "null", ...) becomes NULL, and such attribute values and
  categories are left out (per target).
- Rejected rows are not imported, and every one is counted by rule with examples (and written with its
  row number and reason to `--rejected FILE.csv` when asked): no item_id, no title, attributes that are
  not a JSON object, an item_id an earlier row of the file already had (the first is kept), an image that
  is neither a readable image file nor a store key.

Idempotent: items are upserted (sql/upsert_items.sql): a new item_id is inserted, a known one replaced, so
importing the same file twice leaves the warehouse as once. Streaming and one transaction, as every
importer here (source.py, staging.py); images are copied before that transaction, one at a time.
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pmg_tasks.importers.source import (
    ImportDataError,
    column,
    count_replaced,
    describe,
    file_format,
    lenient_text,
    parse_pairs,
    read_params,
    read_sql,
    readable_file,
    replaced_text,
    timestamp_sql,
    transfer,
    working_connection,
)
from pmg_tasks.layout import item_image_key
from pmg_tasks.text_safety import NULL_LIKE
from pmg_tasks.warehouse import Warehouse

if TYPE_CHECKING:
    import duckdb

    from pmg_tasks.store import ObjectStore

log = logging.getLogger(__name__)

ITEM_TARGETS = ("item_id", "title", "description", "categories", "attributes", "image", "updated_at")
REQUIRED = ("item_id", "title")
TEXT_TARGETS = ("item_id", "title", "description", "image")
EXAMPLES = 10
SUGGESTION_SAMPLE = 2000
_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")
_IMAGE_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

# Rules that reject a row, in the order they are checked.
REJECT_RULES = {
    "item_id_missing": "item_id is empty or only spells a missing value (null, NaN, None, ...)",
    "title_missing": "title is empty or only spells a missing value (null, NaN, None, ...)",
    "attributes_not_json": "the attributes column does not hold a JSON object",
    "duplicate_item_id": "item_id already occurs in an earlier row of the file; the first is kept",
    "image_unreadable": "the image is neither a readable image file nor a key in the object store",
}


@dataclass(frozen=True)
class ItemMapping:
    """Which file column feeds each item target, and which feed named attributes."""

    fields: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)


def parse_item_mapping(spec: str | Iterable[str] | dict[str, str] | None) -> ItemMapping:
    """An ItemMapping from 'item_id=sku,title=name,brand=maker' (or a dict), checked."""
    pairs = list(spec.items()) if isinstance(spec, dict) else parse_pairs(spec, "--map")
    fields: dict[str, str] = {}
    attributes: dict[str, str] = {}
    for target, source in pairs:
        if target in fields or target in attributes:
            raise ImportDataError(f"--map names {target!r} twice")
        if target in ITEM_TARGETS:
            fields[target] = source
            continue
        close = difflib.get_close_matches(target.lower(), ITEM_TARGETS + ("image_uri",), n=1, cutoff=0.75)
        if close:
            raise ImportDataError(
                f"--map names {target!r}: did you mean {close[0]!r}? (a target that is not an item column "
                f"becomes an attribute; the item columns are {', '.join(ITEM_TARGETS)})"
            )
        if not _ATTRIBUTE_NAME.match(target):
            raise ImportDataError(
                f"--map names the attribute {target!r}: an attribute name is letters, digits and _ (at most 40)"
            )
        attributes[target] = source
    return ItemMapping(fields, attributes)


def import_items_file(
    warehouse: Warehouse,
    path: str | Path,
    mapping: ItemMapping | dict[str, str] | str | None = None,
    *,
    store: ObjectStore | None = None,
    fmt: str | None = None,
    delimiter: str | None = None,
    encoding: str | None = None,
    categories_delimiter: str = "|",
    images_dir: str | Path | None = None,
    ts_unit: str = "s",
    rejected_path: str | Path | None = None,
    memory_limit: str = "2GB",
) -> dict:
    """Import the items of a catalog file; returns what was imported, cleaned and rejected (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ImportDataError(f"no file {path}")
    mapping = mapping if isinstance(mapping, ItemMapping) else parse_item_mapping(mapping)
    fmt = file_format(path, fmt)
    if not categories_delimiter:
        raise ImportDataError("--categories-delimiter cannot be empty")
    warehouse.apply_ddl()

    with working_connection(warehouse, memory_limit) as con, readable_file(path, fmt, encoding) as (readable, recoded):
        from_sql = read_sql(fmt, delimiter=delimiter)
        params = read_params(readable, delimiter=delimiter)
        found = describe(con, from_sql, params)
        sources = _resolve(mapping, found, path)
        if "image" in sources and store is None:
            raise ImportDataError("the image column needs an object store to copy the images into")
        used = {*sources.values(), *mapping.attributes.values()}
        raw = {c: lenient_text(con, f"src.{column(c)}", found[c]) for c in used if _is_text(found[c])}
        lenient = recoded or any(found[c].upper() == "BLOB" for c in raw)
        replaced = count_replaced(con, from_sql, params, raw) if lenient else {}
        text_of = {c: replaced_text(r) if lenient else r for c, r in raw.items()}

        read = _read_sql(from_sql, sources, mapping.attributes, found, text_of, ts_unit)
        if "$categories_delimiter" in read:
            params = {**params, "categories_delimiter": categories_delimiter}
        con.execute(f"CREATE OR REPLACE TEMP TABLE import_items_read AS {read}", params).fetchall()
        con.execute(f"CREATE OR REPLACE TEMP TABLE import_mapped AS {_RULES_SQL}").fetchall()
        images = _copy_images(con, store, Path(images_dir).resolve() if images_dir else path.resolve().parent)

        summary = _summary(con, path, sources, mapping, replaced, images)
        if rejected_path is not None:
            summary["rejected_file"] = str(_write_rejected(con, Path(rejected_path)))
        sample = con.execute(
            f"SELECT title, categories FROM ({_JUDGED_SQL}) WHERE rule IS NULL ORDER BY _row LIMIT {SUGGESTION_SAMPLE}"
        ).fetchall()
        summary["items_written"] = transfer(
            warehouse,
            con,
            "items",
            "SELECT item_id, title, categories, description, attributes, image_uri, updated_at "
            f"FROM ({_JUDGED_SQL}) WHERE rule IS NULL",
        )

    from pmg_tasks.keywords.scenario import suggest_scenario

    scenario, why = suggest_scenario(sample)
    summary["scenario"] = {"suggested": scenario, "why": why}
    _log(summary)
    return summary


# -- mapping ---------------------------------------------------------------------------------------------


def _resolve(mapping: ItemMapping, found: dict[str, str], path: Path) -> dict[str, str]:
    """item target -> file column, for the targets the file has, with errors that name what is missing."""
    for what, source in [*mapping.fields.items(), *mapping.attributes.items()]:
        if source not in found:
            raise ImportDataError(
                f"column {source!r} (mapped to {what}) is not in {path.name}; its columns are: " + ", ".join(found)
            )
    sources = dict(mapping.fields)
    for target in ITEM_TARGETS:
        if target not in sources and target in found:
            sources[target] = target
    missing = [t for t in REQUIRED if t not in sources]
    if missing:
        raise ImportDataError(
            f"{path.name} has no column for {', '.join(missing)}: map one with --map "
            + ",".join(f"{m}=COLUMN" for m in missing)
            + f" (its columns are: {', '.join(found)})"
        )
    return sources


def _is_text(duck_type: str) -> bool:
    return duck_type.upper() in {"VARCHAR", "BLOB", "JSON"}


def _null_like(text: str) -> str:
    """SQL: `text`, or NULL where it only spells a missing value."""
    spelled = ", ".join("'" + v.replace("'", "''") + "'" for v in sorted(NULL_LIKE))
    return f"CASE WHEN lower(trim({text})) IN ({spelled}) THEN NULL ELSE {text} END"


def _read_sql(
    from_sql: str,
    sources: dict[str, str],
    attributes: dict[str, str],
    found: dict[str, str],
    text_of: dict[str, str],
    ts_unit: str,
) -> str:
    """SQL: the file's rows as item columns, numbered in file order, with what cleaning did to each."""

    def text(target: str) -> str:
        source = sources.get(target)
        if source is None:
            return "CAST(NULL AS VARCHAR)"
        return text_of.get(source) or f"CAST(src.{column(source)} AS VARCHAR)"

    cleaned = {t: _null_like(text(t)) for t in TEXT_TARGETS}
    categories_raw, categories = _categories_sql(sources.get("categories"), found, text_of)
    base_raw, base_valid, base = _attributes_sql(sources.get("attributes"), found, text_of)
    # Text values that spell a missing value become NULL, which the merge drops; numbers, lists and JSON
    # values go in as they are. Attribute names passed _ATTRIBUTE_NAME, so they are safe as literals.
    named = ", ".join(
        f"'{name}', {_null_like(text_of[src]) if found[src].upper() in {'VARCHAR', 'BLOB'} else f'src.{column(src)}'}"
        for name, src in attributes.items()
    )
    patch = f"json_object({named})" if named else "'{}'"
    merged = f"json_merge_patch(json_merge_patch('{{}}', coalesce({base}, '{{}}')), {patch})"
    updated = (
        timestamp_sql(f"src.{column(sources['updated_at'])}", found[sources["updated_at"]], ts_unit)
        if "updated_at" in sources
        else "CAST(NULL AS TIMESTAMP)"
    )
    nulled = [f"({text(t)} IS NOT NULL AND {cleaned[t]} IS NULL) AS _nulled_{t}" for t in TEXT_TARGETS]
    nulled.append(f"({categories_raw} IS NOT NULL AND {categories} IS NULL) AS _nulled_categories")
    return f"""
        SELECT row_number() OVER () AS _row,
               {cleaned["item_id"]} AS item_id, {cleaned["title"]} AS title, {categories} AS categories,
               {cleaned["description"]} AS description,
               NULLIF(CAST({merged} AS VARCHAR), '{{}}') AS attributes,
               {base_valid} AS _attributes_valid, {base_raw} AS _attributes_source,
               {cleaned["image"]} AS _image_source, {updated} AS updated_at,
               {", ".join(nulled)}
        FROM {from_sql} AS src
    """


def _categories_sql(source: str | None, found: dict[str, str], text_of: dict[str, str]) -> tuple[str, str]:
    """(raw, cleaned) SQL for categories: a list or delimited text in, '|'-separated text out, parts that
    spell a missing value left out, and a '|' inside a part (a list element) turned into '/'."""
    if source is None:
        return "CAST(NULL AS VARCHAR)", "CAST(NULL AS VARCHAR)"
    duck_type = found[source].upper()
    value = f"src.{column(source)}"
    if duck_type.endswith("[]"):
        parts = f"list_transform({value}, lambda c: CAST(c AS VARCHAR))"
    elif duck_type == "JSON":
        parts = (
            f"CASE WHEN json_type({value}) = 'ARRAY' THEN from_json({value}, '[\"VARCHAR\"]') "
            f"ELSE string_split(json_extract_string({value}, '$'), $categories_delimiter) END"
        )
    else:
        parts = f"string_split({text_of.get(source, f'CAST({value} AS VARCHAR)')}, $categories_delimiter)"
    spelled = ", ".join("'" + v.replace("'", "''") + "'" for v in sorted(NULL_LIKE))
    tidy = f"list_transform({parts}, lambda c: replace(trim(replace(c, chr(64976), chr(65533))), '|', '/'))"
    kept = f"list_filter({tidy}, lambda c: c IS NOT NULL AND lower(c) NOT IN ({spelled}))"
    return f"CAST({value} AS VARCHAR)", f"NULLIF(array_to_string({kept}, '|'), '')"


def _attributes_sql(source: str | None, found: dict[str, str], text_of: dict[str, str]) -> tuple[str, str, str]:
    """(raw text, is-valid, JSON object or NULL) SQL for the column that holds attributes as JSON."""
    if source is None:
        return "CAST(NULL AS VARCHAR)", "true", "CAST(NULL AS VARCHAR)"
    duck_type = found[source].upper()
    value = f"src.{column(source)}"
    if duck_type.startswith(("STRUCT", "MAP")):
        return f"CAST(to_json({value}) AS VARCHAR)", "true", f"CAST(to_json({value}) AS VARCHAR)"
    text = _null_like(text_of.get(source, f"CAST({value} AS VARCHAR)"))
    valid = f"({text} IS NULL OR CASE WHEN json_valid({text}) THEN json_type({text}) = 'OBJECT' ELSE false END)"
    return text, valid, f"CASE WHEN {valid} THEN {text} END"


# -- rules -----------------------------------------------------------------------------------------------

# The first usable row of an item_id is kept; later ones are duplicates. An unreadable image is found after
# these rules, by _copy_images, which fills image_uri or _image_problem and sets the rule.
_RULES_SQL = """
    SELECT *, CASE WHEN _row_rule IS NULL AND _row > _first_row THEN 'duplicate_item_id' ELSE _row_rule END AS rule,
           CAST(NULL AS VARCHAR) AS image_uri, CAST(NULL AS VARCHAR) AS _image_problem
    FROM (
        SELECT *, min(CASE WHEN _row_rule IS NULL THEN _row END) OVER (PARTITION BY item_id) AS _first_row
        FROM (
            SELECT *, CASE WHEN item_id IS NULL THEN 'item_id_missing'
                           WHEN title IS NULL THEN 'title_missing'
                           WHEN NOT _attributes_valid THEN 'attributes_not_json' END AS _row_rule
            FROM import_items_read
        )
    )
"""
# Every row with its rule (NULL: imported) and the reason for it.
_JUDGED_SQL = """
    SELECT *,
           CASE rule
               WHEN 'item_id_missing' THEN 'item_id is empty or only spells a missing value'
               WHEN 'title_missing' THEN 'title is empty or only spells a missing value'
               WHEN 'attributes_not_json' THEN 'attributes ' || left(_attributes_source, 60) || ' is not a JSON object'
               WHEN 'duplicate_item_id' THEN 'item_id already in row ' || CAST(_first_row AS VARCHAR)
                    || ' of the file; the first is kept'
               WHEN 'image_unreadable' THEN _image_problem
           END AS reason
    FROM import_mapped
"""


def _copy_images(con: duckdb.DuckDBPyConnection, store: ObjectStore, base: Path) -> int:
    """Copy the image of every row the SQL rules kept into the store; record its key, or reject the row
    with what is wrong."""
    import pyarrow as pa

    rows = con.execute(
        "SELECT _row, item_id, _image_source FROM import_mapped WHERE rule IS NULL AND _image_source IS NOT NULL "
        "ORDER BY _row"
    ).fetchall()
    if not rows:
        return 0
    outcome = {"_row": [], "image_uri": [], "problem": []}
    for row, item_id, source in rows:
        key, problem = _copy_image(store, item_id, source, base)
        outcome["_row"].append(row)
        outcome["image_uri"].append(key)
        outcome["problem"].append(problem)
    table = pa.table(outcome, schema=pa.schema([("_row", pa.int64()), ("image_uri", pa.string()),
                                                ("problem", pa.string())]))
    con.register("pmg_import_item_images", table)
    try:
        con.execute(
            "UPDATE import_mapped SET image_uri = i.image_uri, _image_problem = i.problem, "
            "rule = CASE WHEN i.problem IS NOT NULL THEN 'image_unreadable' END "
            "FROM pmg_import_item_images i WHERE import_mapped._row = i._row"
        ).fetchall()
    finally:
        con.unregister("pmg_import_item_images")
    return sum(key is not None for key in outcome["image_uri"])


def _copy_image(store: ObjectStore, item_id: str, source: str, base: Path) -> tuple[str | None, str | None]:
    """(store key, None) once the image is in the store, or (None, why it cannot be)."""
    data, problem = _image_bytes(store, source, base)
    if data is None:
        return None, problem
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            image_format = image.format or ""
    except UnidentifiedImageError:
        return None, f"image {source!r} is not an image file pmg can read (PNG, JPEG, WebP, GIF, ...)"
    except (OSError, SyntaxError, ValueError) as error:  # a truncated or corrupt image
        return None, f"image {source!r} is damaged ({error})"
    key = item_image_key(item_id, _IMAGE_FORMATS.get(image_format, image_format.lower() or "img"))
    if key != source:
        store.put_bytes(key, data)
    return key, None


def _image_bytes(store: ObjectStore, source: str, base: Path) -> tuple[bytes | None, str | None]:
    if source.startswith("file://"):
        source = source[len("file://") :]
    elif _URL.match(source):
        root = store.url("_")[:-1]
        if not source.startswith(root):
            return None, f"image {source!r} is a URL: pmg fetches nothing over the network; give a local file"
        source = source[len(root) :]
    local = Path(source).expanduser()
    local = local if local.is_absolute() else base / local
    if local.is_file():
        try:
            return local.read_bytes(), None
        except OSError as error:
            return None, f"image file {local} cannot be read ({error.strerror or error})"
    try:
        if store.exists(source):
            return store.get_bytes(source), None
    except ValueError:  # a key that would leave the store is no key of ours
        pass
    return None, f"image {source!r}: no file {local} and no object of that key in the store"


# -- what happened ---------------------------------------------------------------------------------------


def _summary(con, path: Path, sources: dict, mapping: ItemMapping, replaced: dict, images: int) -> dict:
    rules = list(REJECT_RULES)
    nulled = ("item_id", "title", "description", "categories", "image")
    counts = con.execute(
        "SELECT count(*), "
        + ", ".join(f"count(*) FILTER (WHERE rule = '{r}')" for r in rules)
        + ", "
        + ", ".join(f"count(*) FILTER (WHERE _nulled_{t})" for t in nulled)
        + f" FROM ({_JUDGED_SQL})"
    ).fetchall()[0]
    examples = con.execute(
        f"SELECT _row, item_id, rule, reason FROM ({_JUDGED_SQL}) WHERE rule IS NOT NULL ORDER BY _row LIMIT {EXAMPLES}"
    ).fetchall()
    rejected = dict(zip(rules, (int(n) for n in counts[1 : 1 + len(rules)]), strict=True))
    missing = dict(zip(nulled, (int(n) for n in counts[1 + len(rules) :]), strict=True))
    return {
        "file": str(path),
        "rows": int(counts[0]),
        "rejected": rejected,
        "rejected_examples": [
            {"row": int(r), "item_id": item_id, "rule": rule, "reason": reason} for r, item_id, rule, reason in examples
        ],
        "cleaned": {
            "invalid_utf8_replaced": replaced,
            "missing_values_to_null": {t: n for t, n in missing.items() if n},
        },
        "images_copied": images,
        "mapping": sources,
        "attributes": dict(mapping.attributes),
    }


def _write_rejected(con, target: Path) -> Path:
    """Every rejected row, with its row number in the file, id, title, rule and reason, as CSV."""
    target.parent.mkdir(parents=True, exist_ok=True)
    result = con.execute(f"SELECT _row, item_id, title, rule, reason FROM ({_JUDGED_SQL}) WHERE rule IS NOT NULL ORDER BY _row")
    with open(target, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["row", "item_id", "title", "rule", "reason"])
        while chunk := result.fetchmany(10_000):
            writer.writerows(chunk)
    return target


def _log(summary: dict) -> None:
    rejected = sum(summary["rejected"].values())
    if rejected:
        log.warning("%s: %d rows rejected: %s", summary["file"], rejected,
                    {k: v for k, v in summary["rejected"].items() if v})
    for name, count in summary["cleaned"]["invalid_utf8_replaced"].items():
        log.warning("%s: column %s held bytes that are not UTF-8 in %d rows; each became U+FFFD",
                    summary["file"], name, count)
    log.info("%s: %d rows, %d items written, %d images copied", summary["file"], summary["rows"],
             summary["items_written"], summary["images_copied"])


def describe_import(summary: dict) -> str:
    """The result as a person reads it: what went in, what was cleaned, what was rejected and why."""
    lines = [f"{summary['file']}: {summary['rows']} rows, {summary['items_written']} items written "
             f"(inserted or replaced), {summary['images_copied']} images copied into the store"]
    rejected = {rule: n for rule, n in summary["rejected"].items() if n}
    if rejected:
        lines.append(f"rejected {sum(rejected.values())} rows (not imported):")
        lines += [f"  {rule:<20} {n:>7}  {REJECT_RULES[rule]}" for rule, n in rejected.items()]
        lines += [f"    row {e['row']}: {e['reason']}" for e in summary["rejected_examples"]]
        if summary.get("rejected_file"):
            lines.append(f"  every rejected row, with its reason: {summary['rejected_file']}")
    else:
        lines.append("rejected: none")
    cleaned = summary["cleaned"]
    for name, n in cleaned["invalid_utf8_replaced"].items():
        lines.append(f"cleaned: column {name!r}: {n} rows held bytes that are not UTF-8 (now U+FFFD)")
    for target, n in cleaned["missing_values_to_null"].items():
        lines.append(f"cleaned: {target}: {n} values that only spell a missing value ('nan', 'None', ...) are NULL")
    scenario = summary["scenario"]
    lines.append(f"keyword scenario: {scenario['suggested']} suggested ({scenario['why']}); choose it with "
                 f"PMG_KEYWORDS__SCENARIO={scenario['suggested']}")
    return "\n".join(lines)
