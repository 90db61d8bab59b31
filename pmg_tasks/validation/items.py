"""Validation of the item catalog: hard rules quarantine an item, soft fixes clean it, nothing is silent.

The catalog is where text from the outside world enters pmg: titles and descriptions end up in prompts,
reports and logs. Here that text is treated as data, never as instructions:

- hard rules (`ITEM_RULES`) quarantine the item: its row goes to items_quarantine.parquet with the rule and
  a reason, and events that reference it are quarantined by event validation (rule item_quarantined);
- soft fixes clean the item and keep it: control and bidi characters removed, whitespace collapsed,
  invalid UTF-8 bytes replaced by U+FFFD, titles and descriptions capped in length, unusable image URIs
  dropped. Each fix is counted in the report;
- flags only report: text that reads like an instruction to a language model ("ignore previous
  instructions") is kept as it is (cleaned, capped) and counted, because it is a title, not an order.

No value from the catalog is ever formatted into SQL: the catalog is read with a fixed query and the rest
happens here, in Python, one row at a time (catalogs are thousands to a few million rows, not billions).

Runs in the extract stage, where the catalog is first materialised, so items.parquet is written once,
already clean, by the one stage that owns it; see docs/warehouse.md.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from pmg_tasks.text_safety import clean_text
from pmg_tasks.validation.rules import CONTROL_CHARS_PY, MAX_ID_LENGTH, has_format_characters, is_null_like
from pmg_tasks.warehouse import ITEM_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa

MAX_TITLE_CHARS = 200
MAX_DESCRIPTION_CHARS = 2_000
MAX_CATEGORY_CHARS = 40
MAX_CATEGORIES = 20
MAX_IMAGE_URI_CHARS = 2_048
MAX_ATTRIBUTES_CHARS = 8_192

_CONTROL = re.compile(CONTROL_CHARS_PY)
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
# Text that addresses a language model rather than describing an item. A heuristic for the report only.
PROMPT_LIKE = re.compile(
    r"ignore (?:all |any |the )?(?:previous|prior|above|earlier) (?:instructions|prompts?|rules)"
    r"|disregard (?:all |any |the )?(?:previous|prior|above) "
    r"|system prompt|you are now |<\|?(?:im_start|im_end|system|assistant|user)\|?>|\[/?INST\]",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ItemRule:
    name: str
    reason: str


ITEM_RULES: tuple[ItemRule, ...] = (
    ItemRule("item_id_null", "item_id is null; every catalog row needs one"),
    ItemRule("item_id_invalid_utf8", "item_id is not valid UTF-8; an id cannot be repaired"),
    ItemRule("item_id_empty", "item_id is empty or only blanks"),
    ItemRule("item_id_null_like", 'item_id spells a missing value ("null", "NaN", "None", ...), not an id'),
    ItemRule("item_id_too_long", f"item_id is longer than {MAX_ID_LENGTH} characters"),
    ItemRule("item_id_control_characters", "item_id contains control characters (NUL, tab, newline, ...)"),
    ItemRule(
        "item_id_format_characters",
        "item_id contains invisible format characters (Unicode category Cf, e.g. the bidi override U+202E)",
    ),
    ItemRule("title_missing", "title is null, empty or only control characters and blanks"),
    ItemRule("attributes_not_json", "attributes is not a JSON object"),
    ItemRule("attributes_too_large", f"attributes is longer than {MAX_ATTRIBUTES_CHARS} characters"),
    ItemRule(
        "duplicate_item_id", "item_id already occurs in an earlier catalog row; the first valid row is kept"
    ),
)
ITEM_RULE_NAMES: tuple[str, ...] = tuple(rule.name for rule in ITEM_RULES)
_REASONS = {rule.name: rule.reason for rule in ITEM_RULES}

# Soft fixes and flags, in report order.
ITEM_FIXES = (
    "invalid_utf8_replaced",
    "title_cleaned",
    "title_truncated",
    "description_cleaned",
    "description_truncated",
    "categories_cleaned",
    "image_uri_dropped",
    "updated_at_dropped",
)
ITEM_FLAGS = ("prompt_like_text",)


def items_quarantine_schema() -> pa.Schema:
    import pyarrow as pa

    from pmg_tasks.warehouse import items_schema

    return items_schema().append(pa.field("rule", pa.string())).append(pa.field("reason", pa.string()))


@dataclass
class CatalogCheck:
    """Running state of one catalog pass: ids kept so far and the counts for the report."""

    seen: set[str] = field(default_factory=set)
    extracted: int = 0
    valid: int = 0
    quarantined: int = 0
    by_rule: Counter = field(default_factory=Counter)
    fixes: Counter = field(default_factory=Counter)
    flags: Counter = field(default_factory=Counter)

    def report(self) -> dict:
        return {
            "extracted": self.extracted,
            "valid": self.valid,
            "quarantined": self.quarantined,
            "by_rule": {name: self.by_rule.get(name, 0) for name in ITEM_RULE_NAMES},
            "fixes": {name: self.fixes.get(name, 0) for name in ITEM_FIXES},
            "flags": {name: self.flags.get(name, 0) for name in ITEM_FLAGS},
            "rules": [{"name": r.name, "reason": r.reason} for r in ITEM_RULES],
            "limits": {
                "title_chars": MAX_TITLE_CHARS,
                "description_chars": MAX_DESCRIPTION_CHARS,
                "attributes_chars": MAX_ATTRIBUTES_CHARS,
                "image_uri_chars": MAX_IMAGE_URI_CHARS,
            },
        }

    def check(self, row: dict[str, Any]) -> tuple[dict[str, Any], str | None, str | None]:
        """(row, rule, reason): the cleaned row and None, None when it is kept; else the row as extracted
        (text decoded) with the rule and reason that quarantine it."""
        self.extracted += 1
        raw = {name: row.get(name) for name in ITEM_COLUMNS}
        decoded, bad_utf8 = {}, set()
        for name in ITEM_COLUMNS:
            value, replaced = _decode(raw[name]) if name != "updated_at" else (raw[name], False)
            decoded[name] = value
            if replaced:
                bad_utf8.add(name)
        rule = self._hard_rule(decoded, "item_id" in bad_utf8)
        if rule is not None:
            self.quarantined += 1
            self.by_rule[rule] += 1
            quarantined = dict(decoded, updated_at=_timestamp(decoded["updated_at"])[0])
            return quarantined, rule, _reason(rule, decoded)

        self.seen.add(decoded["item_id"])
        self.valid += 1
        if bad_utf8:
            self.fixes["invalid_utf8_replaced"] += 1
        return self._cleaned(decoded), None, None

    def _hard_rule(self, row: dict[str, Any], id_not_utf8: bool) -> str | None:
        item_id = row["item_id"]
        if item_id is None:
            return "item_id_null"
        if id_not_utf8:
            return "item_id_invalid_utf8"
        if not item_id.strip(" "):
            return "item_id_empty"
        if is_null_like(item_id):
            return "item_id_null_like"
        if len(item_id) > MAX_ID_LENGTH:
            return "item_id_too_long"
        if _CONTROL.search(item_id):
            return "item_id_control_characters"
        if not item_id.isascii() and has_format_characters(item_id):
            return "item_id_format_characters"
        if not _uncapped(row["title"]):
            return "title_missing"
        attributes = row["attributes"]
        if attributes is not None:
            if len(attributes) > MAX_ATTRIBUTES_CHARS:
                return "attributes_too_large"
            if not _is_json_object(attributes):
                return "attributes_not_json"
        if item_id in self.seen:
            return "duplicate_item_id"
        return None

    def _cleaned(self, row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        out["title"] = self._text(row["title"], MAX_TITLE_CHARS, "title")
        if row["description"] is not None:
            out["description"] = self._text(row["description"], MAX_DESCRIPTION_CHARS, "description")
        if row["categories"] is not None:
            parts = [_cap(_uncapped(part), MAX_CATEGORY_CHARS) for part in row["categories"].split("|")]
            cleaned = "|".join([p for p in parts if p][:MAX_CATEGORIES]) or None
            if cleaned != row["categories"]:
                self.fixes["categories_cleaned"] += 1
            out["categories"] = cleaned
        uri = row["image_uri"]
        if uri is not None and (len(uri) > MAX_IMAGE_URI_CHARS or _SPACE_OR_CONTROL.search(uri)):
            self.fixes["image_uri_dropped"] += 1
            out["image_uri"] = None
        out["updated_at"], dropped = _timestamp(row["updated_at"])
        if dropped:
            self.fixes["updated_at_dropped"] += 1
        if any(PROMPT_LIKE.search(v) for v in (out["title"], out["description"]) if v):
            self.flags["prompt_like_text"] += 1
        return out

    def _text(self, value: str | None, limit: int, name: str) -> str | None:
        if value is None:
            return None
        cleaned = _uncapped(value)
        if cleaned != value:
            self.fixes[f"{name}_cleaned"] += 1
        if len(cleaned) > limit:
            self.fixes[f"{name}_truncated"] += 1
            cleaned = _cap(cleaned, limit)
        return cleaned


def check_catalog(
    batches: Iterable[tuple[list[str], list[tuple]]], state: CatalogCheck | None = None
) -> Iterator[tuple[pa.Table, pa.Table]]:
    """(kept, quarantined) Arrow tables per batch of rows, `state` counting as it goes.

    `batches` yields (column names, rows) as a database cursor returns them; values may be str, bytes,
    datetime or None, whatever the engine handed out.
    """
    import pyarrow as pa

    from pmg_tasks.warehouse import items_schema

    state = state if state is not None else CatalogCheck()
    kept_schema, quarantine_schema = items_schema(), items_quarantine_schema()
    for names, rows in batches:
        kept, quarantined = [], []
        for values in rows:
            row, rule, reason = state.check(dict(zip(names, values, strict=True)))
            if rule is None:
                kept.append(row)
            else:
                quarantined.append(dict(row, rule=rule, reason=reason))
        yield (
            pa.Table.from_pylist(kept, schema=kept_schema),
            pa.Table.from_pylist(quarantined, schema=quarantine_schema),
        )


# -- helpers -----------------------------------------------------------------------------------------


def _decode(value: Any) -> tuple[Any, bool]:
    """(text, replaced): bytes and strings with undecodable bytes become text with U+FFFD."""
    if value is None:
        return None, False
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8"), False
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace"), True
    text = value if isinstance(value, str) else str(value)
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        # Lone surrogates: a driver's surrogateescape of bytes that were not UTF-8.
        raw = text.encode("utf-8", errors="surrogateescape") if _escaped_only(text) else None
        if raw is not None:
            return raw.decode("utf-8", errors="replace"), True
        return text.encode("utf-8", errors="replace").decode("utf-8"), True


def _escaped_only(text: str) -> bool:
    return all(not 0xD800 <= ord(ch) <= 0xDFFF or 0xDC80 <= ord(ch) <= 0xDCFF for ch in text)


def _uncapped(value: str | None) -> str:
    """clean_text without its length cap. Short values are cached: categories and titles repeat."""
    if value is not None and len(value) <= 256:
        return _uncapped_short(value)
    return _clean_all(value)


@functools.lru_cache(maxsize=8192)
def _uncapped_short(value: str) -> str:
    return _clean_all(value)


def _clean_all(value: str | None) -> str:
    # NFC can lengthen a string a little (composition exclusions): leave room so nothing is cut.
    return clean_text(value, max_chars=4 * len(value) + 8 if value else 8)


def _cap(text: str, limit: int) -> str:
    """`text` cut to `limit` characters the way clean_text cuts: an ellipsis marks the cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def _timestamp(value: Any) -> tuple[datetime | None, bool]:
    """(naive UTC datetime, dropped): what updated_at can be stored as, and whether a value was lost."""
    if value is None:
        return None, False
    if isinstance(value, datetime):
        return (value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value), False
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day), False
    if isinstance(value, str):
        try:
            return _timestamp(datetime.fromisoformat(value))[0], False
        except ValueError:
            return None, True
    return None, True


def _reason(rule: str, row: dict[str, Any]) -> str:
    shown = _shown(row["item_id"])
    if rule == "item_id_too_long":
        return f"item_id {shown} is {len(row['item_id'])} characters long (max {MAX_ID_LENGTH})"
    if rule == "item_id_control_characters":
        return f"item_id {shown} contains control characters (NUL, tab, newline, ...)"
    if rule == "item_id_format_characters":
        code = next(ord(ch) for ch in row["item_id"] if has_format_characters(ch))
        return f"item_id {_shown(row['item_id'])} contains the invisible format character U+{code:04X} (Unicode Cf)"
    if rule == "item_id_null_like":
        return f"item_id {_shown(row['item_id'])} spells a missing value, not an id"
    if rule == "item_id_invalid_utf8":
        return f"item_id {shown} is not valid UTF-8 (undecodable bytes shown as U+FFFD)"
    if rule == "title_missing":
        return f"item {shown}: title is null, empty or only control characters and blanks"
    if rule == "attributes_too_large":
        return f"item {shown}: attributes is {len(row['attributes'])} characters (max {MAX_ATTRIBUTES_CHARS})"
    if rule == "attributes_not_json":
        return f"item {shown}: attributes {_shown(row['attributes'])} is not a JSON object"
    if rule == "duplicate_item_id":
        return f"item_id {shown} already occurs in an earlier catalog row; the first valid row is kept"
    return _REASONS[rule]


def _shown(value: str | None, width: int = 40) -> str:
    """A value for a reason sentence: quoted, control and format characters escaped, cut to `width`."""
    if value is None:
        return "null"
    escaped = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value[: width * 2])
    if not escaped.isascii():  # a bidi override would turn the rest of the sentence around
        escaped = "".join(f"\\u{ord(ch):04x}" if has_format_characters(ch) else ch for ch in escaped)
    return "'" + escaped[:width] + ("…" if len(value) > width else "") + "'"
