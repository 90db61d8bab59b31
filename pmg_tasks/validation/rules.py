"""The row rules of event validation: each a name, a reason and a vectorised check.

A check is a DuckDB SQL boolean expression over one event row that is TRUE when the row BREAKS the rule
(NULL counts as not broken). Besides the event columns, a check may use the columns the stage adds:

    _window_start, _window_end  the run's extraction window [start, end), naive UTC
    _now                        the cut-off for timestamps in the future, naive UTC
    _in_catalog                 item_id is in the run's cleaned item catalog (items.parquet)
    _suspect_ids                an id holds a control or format character (`suspect_ids_sql`); item_id
                                is only looked at when it is not in the catalog
    _item_quarantined           item_id is not in the catalog because the catalog's own validation
                                quarantined it (items_quarantine.parquet)
    _duplicate                  an earlier row (by event_ts, then file order) has the same event_id and
                                different content (a near-duplicate)
    _exact_duplicate            an earlier row has the same event_id and the same content in every column
                                (an at-least-once redelivery)

and a `detail` (the reason sentence of a quarantined row) may also use `_item_rule`, the item rule that
quarantined the row's item.

Rules are evaluated in the order of `RULES`; a row is quarantined under the FIRST rule it breaks, so the
order goes from "the row is unusable" (missing keys) to "the row is fine on its own but clashes with
others" (duplicates). `detail`, when given, is a SQL expression for the row's own reason sentence (with
the offending value); otherwise the quarantine `reason` column holds `reason`.

The checks are written to be cheap on ten million rows, without changing what they mean:
- a string is at most as many characters as it has bytes, so `strlen` (bytes, O(1)) rules out almost every
  id before `length` (characters) counts anything;
- a string of blanks sorts before '!' (the first printable character after the blank), so a byte
  comparison rules out almost every id before `trim` copies anything;
- the expensive part of a check sits in a CASE branch, which DuckDB evaluates only for the rows that
  reach it (an AND evaluates both sides);
- control and format characters are looked for once per row, in the ids joined together (a string has
  one exactly when one of its parts has), and which of the two it is only in the few rows that have one;
- a null-like id ("null", "NaN", ...) is at most 4 characters once trimmed, so only ids that short or
  that start or end with a blank are compared with the list;
- an item_id found in the catalog passed the catalog's own id rules (the stage only puts clean ids in
  it), so the id checks look at item_id only when it is not in the catalog.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass

from pmg_tasks.text_safety import NULL_LIKE

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
KEY_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "event_ts")
ID_COLUMNS = ("event_id", "user_id", "item_id", "session_id")
MAX_ID_LENGTH = 128
MAX_DWELL_SECONDS = 86_400.0
# Control characters: C0 (NUL, tab, newline, ...), DEL and C1. RE2 (DuckDB) and Python `re` spellings.
CONTROL_CHARS_RE2 = r"\p{Cc}"
CONTROL_CHARS_PY = r"[\x00-\x1f\x7f-\x9f]"
# Invisible format characters (Unicode category Cf): bidi overrides such as U+202E, zero-width spaces and
# joiners, soft hyphens, tag characters. An id holding one reads like another id, or reverses the text
# around it in a log.
FORMAT_CHARS_RE2 = r"\p{Cf}"
_SUSPECT_CHARS_RE2 = r"[\p{Cc}\p{Cf}]"
# Text that spells a missing value ("null", "NaN", "None", ...; text_safety.NULL_LIKE less the empty
# string, which rule empty_id names), compared case-blind and trimmed.
NULL_LIKE_IDS: tuple[str, ...] = tuple(sorted(NULL_LIKE - {""}))
_NULL_LIKE_MAX_CHARS = max(len(text) for text in NULL_LIKE_IDS)


@dataclass(frozen=True)
class Rule:
    name: str
    reason: str
    check: str
    detail: str | None = None

    def reason_sql(self) -> str:
        """SQL for the quarantine `reason` of a row that breaks this rule."""
        return self.detail if self.detail is not None else sql_string(self.reason)


def sql_string(text: str) -> str:
    """A SQL string literal of `text` (our own constants, never data)."""
    return "'" + text.replace("'", "''") + "'"


def _shown(column: str, width: int = 40) -> str:
    """SQL: the column's value quoted and cut to `width` characters, for a reason sentence."""
    return f"coalesce('''' || left({column}, {width}) || '''', 'null')"


def _shown_visible(column: str, width: int = 40) -> str:
    """SQL: like `_shown`, with control and format characters shown as '?' (a bidi override would turn the
    rest of the sentence around)."""
    visible = f"regexp_replace(left({column}, {width}), '{_SUSPECT_CHARS_RE2}', '?', 'g')"
    return f"coalesce('''' || {visible} || '''', 'null')"


def _first_column(condition: str, columns: tuple[str, ...]) -> str:
    """SQL: the name of the first column for which `condition` ("{c}" stands for the column) holds."""
    whens = " ".join(f"WHEN {condition.replace('{c}', c)} THEN '{c}'" for c in columns)
    return f"CASE {whens} END"


def _any_column(condition: str, columns: tuple[str, ...]) -> str:
    """SQL: `condition` holds for one of `columns`; item_id is only looked at when not in the catalog."""
    parts = []
    for c in columns:
        test = f"coalesce({condition.replace('{c}', c)}, false)"
        parts.append(f"(CASE WHEN _in_catalog THEN false ELSE {test} END)" if c == "item_id" else test)
    return " OR ".join(parts)


def _lazy(cheap: str, exact: str) -> str:
    """SQL: `cheap AND exact`, with `exact` evaluated only where `cheap` holds."""
    return f"CASE WHEN {cheap} THEN {exact} ELSE false END"


def _null_rule(column: str) -> Rule:
    return Rule(
        name=f"null_{column}",
        reason=f"{column} is null; it is required in every event",
        check=f"{column} IS NULL",
    )


def is_null_like(value: str) -> bool:
    """Whether the text `value` spells a missing value ("null", " NaN ", "None", ...), as rule null_like_id
    has it."""
    return value.strip(" ").lower() in NULL_LIKE_IDS


def has_format_characters(value: str) -> bool:
    """Whether `value` holds an invisible format character (Unicode category Cf)."""
    return any(unicodedata.category(ch) == "Cf" for ch in value)


@functools.cache
def format_chars_py() -> str:
    """A Python `re` character class of every format character (Unicode category Cf) this Python knows."""
    ranges, start, last = [], None, None
    # Unicode puts format characters in planes 0, 1 and 14 only; reading just those keeps this cheap.
    for code in (*range(0x20000), *range(0xE0000, 0xF0000)):
        if unicodedata.category(chr(code)) == "Cf":
            if start is None or code != last + 1:
                if start is not None:
                    ranges.append((start, last))
                start = code
            last = code
    ranges.append((start, last))
    return "[" + "".join(f"\\U{a:08x}" + (f"-\\U{b:08x}" if b != a else "") for a, b in ranges) + "]"


_TYPES_SQL = ", ".join(sql_string(t) for t in EVENT_TYPES)
# Cheap-first spellings (see the module docstring); each means exactly its last conjunct.
_TOO_LONG = f"length({{c}}) > {MAX_ID_LENGTH}"
_TOO_LONG_FAST = _lazy(f"strlen({{c}}) > {MAX_ID_LENGTH}", _TOO_LONG)
_CONTROL = "regexp_matches({c}, '" + CONTROL_CHARS_RE2 + "')"
_FORMAT = "regexp_matches({c}, '" + FORMAT_CHARS_RE2 + "')"
_IDS_JOINED = "concat(event_id, user_id, session_id, CASE WHEN _in_catalog THEN '' ELSE item_id END)"
# One regular expression per row (the stage's _suspect_ids column) finds both kinds; which kind it is is
# looked at only in the few rows it found.
_CONTROL_FAST = _lazy("_suspect_ids", _CONTROL.replace("{c}", _IDS_JOINED))
_FORMAT_FAST = _lazy("_suspect_ids", _FORMAT.replace("{c}", _IDS_JOINED))
_EMPTY = "trim({c}) = ''"
_EMPTY_FAST = _lazy("{c} < '!'", _EMPTY)
_NULL_LIKE = "lower(trim({c})) IN (" + ", ".join(sql_string(t) for t in NULL_LIKE_IDS) + ")"
_NULL_LIKE_FAST = _lazy(
    f"strlen({{c}}) <= {_NULL_LIKE_MAX_CHARS} OR {{c}} < '!' OR ends_with({{c}}, ' ')", _NULL_LIKE
)
_REQUIRED_IDS = ("event_id", "user_id", "item_id")
_NULL_LIKE_SHOWN = ", ".join(f'"{t}"' for t in ("null", "NaN", "None"))


def _format_detail(columns: tuple[str, ...]) -> str:
    """SQL: which column holds a format character, and which one (U+XXXX), for a reason sentence."""
    whens = " ".join(
        f"WHEN {_FORMAT.replace('{c}', c)} THEN '{c} ' || {_shown_visible(c)} || ' contains the invisible format "
        f"character U+' || printf('%04X', unicode(regexp_extract({c}, '{FORMAT_CHARS_RE2}')))"
        for c in columns
    )
    return f"CASE {whens} END || ' (Unicode category Cf: bidi overrides, zero-width characters, ...)'"


def _null_like_detail(columns: tuple[str, ...]) -> str:
    whens = " ".join(f"WHEN {_NULL_LIKE.replace('{c}', c)} THEN '{c} ' || {_shown(c)}" for c in columns)
    return f"CASE {whens} END || ' spells a missing value, not an id'"


RULES: tuple[Rule, ...] = (
    *(_null_rule(c) for c in KEY_COLUMNS),
    Rule(
        name="empty_id",
        reason="an id (event_id, user_id or item_id) is empty or only blanks",
        check=_any_column(_EMPTY_FAST, _REQUIRED_IDS),
        detail=f"{_first_column(_EMPTY, _REQUIRED_IDS)} || ' is empty or only blanks'",
    ),
    Rule(
        name="null_like_id",
        reason=f"an id (event_id, user_id or item_id) spells a missing value ({_NULL_LIKE_SHOWN}, ...)",
        check=_any_column(_NULL_LIKE_FAST, _REQUIRED_IDS),
        detail=_null_like_detail(_REQUIRED_IDS),
    ),
    Rule(
        name="id_too_long",
        reason=f"an id (event_id, user_id, item_id or session_id) is longer than {MAX_ID_LENGTH} characters",
        check=_any_column(_TOO_LONG_FAST, ID_COLUMNS),
        detail=f"{_first_column(_TOO_LONG, ID_COLUMNS)} || ' is longer than {MAX_ID_LENGTH} characters'",
    ),
    Rule(
        name="id_control_characters",
        reason="an id (event_id, user_id, item_id or session_id) contains control characters (NUL, tab, newline, ...)",
        check=_CONTROL_FAST,
        detail=f"{_first_column(_CONTROL, ID_COLUMNS)} || ' contains control characters (NUL, tab, newline, ...)'",
    ),
    Rule(
        name="id_format_characters",
        reason="an id (event_id, user_id, item_id or session_id) contains invisible format characters "
        "(Unicode category Cf, e.g. the bidi override U+202E)",
        check=_FORMAT_FAST,
        detail=_format_detail(ID_COLUMNS),
    ),
    Rule(
        name="unknown_event_type",
        reason=f"event_type is not one of {', '.join(EVENT_TYPES)}",
        check=f"event_type NOT IN ({_TYPES_SQL})",
        detail=f"'event_type ' || {_shown('event_type')} || ' is not one of {', '.join(EVENT_TYPES)}'",
    ),
    Rule(
        name="event_ts_before_window",
        reason="event_ts is before the run's extraction window",
        check="event_ts < _window_start",
        detail="'event_ts ' || CAST(event_ts AS VARCHAR) || ' is before the window start ' "
        "|| CAST(_window_start AS VARCHAR)",
    ),
    Rule(
        name="event_ts_after_window",
        reason="event_ts is at or after the end of the run's extraction window",
        check="event_ts >= _window_end",
        detail="'event_ts ' || CAST(event_ts AS VARCHAR) || ' is at or after the window end ' "
        "|| CAST(_window_end AS VARCHAR)",
    ),
    Rule(
        name="event_ts_in_future",
        reason="event_ts is in the future (a client clock is wrong)",
        check="event_ts > _now",
        detail="'event_ts ' || CAST(event_ts AS VARCHAR) || ' is in the future (now is ' "
        "|| CAST(_now AS VARCHAR) || ' UTC)'",
    ),
    Rule(
        name="dwell_not_a_number",
        reason="dwell_seconds is NaN; an unknown dwell must be null",
        check="isnan(dwell_seconds)",
    ),
    Rule(
        name="dwell_out_of_range",
        reason=f"dwell_seconds is outside [0, {MAX_DWELL_SECONDS:.0f}] seconds",
        check=f"dwell_seconds < 0 OR dwell_seconds > {MAX_DWELL_SECONDS}",
        detail=f"'dwell_seconds ' || CAST(dwell_seconds AS VARCHAR) || ' is outside [0, {MAX_DWELL_SECONDS:.0f}]'",
    ),
    Rule(
        name="item_quarantined",
        reason="item_id was quarantined by the catalog's own validation (items_quarantine.parquet)",
        check=_lazy("NOT _in_catalog", "_item_quarantined"),
        detail=f"'item_id ' || {_shown('item_id')} || ' was quarantined from the item catalog (' "
        "|| coalesce(_item_rule, 'see items_quarantine.parquet') || ')'",
    ),
    Rule(
        name="item_not_in_catalog",
        reason="item_id is not in the run's item catalog (items.parquet)",
        check="NOT _in_catalog",
        detail=f"'item_id ' || {_shown('item_id')} || ' is not in the item catalog'",
    ),
    Rule(
        name="exact_duplicate_event",
        reason="an exact copy of an earlier event (same event_id, same content): a redelivery; the first is "
        "kept, and copies do not count toward the bad-data threshold unless settings.validation says so",
        check="_exact_duplicate",
        detail=f"'event ' || {_shown('event_id')} || ' is an exact copy of an earlier event (a redelivery); "
        "the first is kept'",
    ),
    Rule(
        name="duplicate_event_id",
        reason="event_id already occurs in an earlier event (by event_ts) with different content; the first "
        "occurrence is kept",
        check="_duplicate",
        detail=f"'event_id ' || {_shown('event_id')} || ' already occurs in an earlier event with different "
        "content; the first occurrence is kept'",
    ),
)

RULE_NAMES: tuple[str, ...] = tuple(rule.name for rule in RULES)


def rule_sql(rules: tuple[Rule, ...] = RULES) -> str:
    """SQL: the name of the first rule a row breaks, or NULL for a valid row."""
    whens = "\n    ".join(f"WHEN {rule.check} THEN {sql_string(rule.name)}" for rule in rules)
    return f"CASE\n    {whens}\n  END"


def reason_sql(rules: tuple[Rule, ...] = RULES, rule_column: str = "rule") -> str:
    """SQL: the reason sentence of a row, given the name of the rule it was quarantined under."""
    whens = "\n    ".join(f"WHEN {sql_string(rule.name)} THEN {rule.reason_sql()}" for rule in rules)
    return f"CASE {rule_column}\n    {whens}\n  END"


def suspect_ids_sql(in_catalog: str, alias: str) -> str:
    """SQL for the `_suspect_ids` column over the event row `alias`, given the SQL of `_in_catalog`: one
    regular expression over the ids joined together (a joined string has such a character exactly when
    one of its parts has)."""
    ids = ", ".join(f"{alias}.{c}" for c in ("event_id", "user_id", "session_id"))
    joined = f"concat({ids}, CASE WHEN {in_catalog} THEN '' ELSE {alias}.item_id END)"
    return f"regexp_matches({joined}, '{_SUSPECT_CHARS_RE2}')"


def clean_id_sql(column: str) -> str:
    """SQL: `column` is an id that passes every id rule (not null, not blank, not null-like, short, no control
    or format characters).

    Only such ids go into the catalog the events are checked against, which is what lets the event rules
    skip item_id checks for ids found in the catalog.
    """
    return (
        f"{column} IS NOT NULL AND trim({column}) <> '' AND NOT {_NULL_LIKE.replace('{c}', column)} "
        f"AND length({column}) <= {MAX_ID_LENGTH} AND NOT regexp_matches({column}, '{_SUSPECT_CHARS_RE2}')"
    )
