"""Model output is untrusted: parse it against the declared shape, repair what is repairable, normalise
every keyword, and say when nothing usable is left (the caller then falls back to the catalog).

Repairs, in order: text around the JSON object (prose, code fences), trailing commas, single quotes, an
answer cut off by the token limit (open strings and brackets closed), a string where a list belongs, and as
a last resort `name: a, b, c` lines. Keys outside the shape are dropped; keyword rules are in `normalise`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pmg_tasks.keywords.prompts import MAX_KEYWORD_CHARS
from pmg_tasks.text_safety import clean_keyword

MAX_KEYWORD_WORDS = 4
# What an obeyed injection, a chat artefact or markup looks like; none of it is a keyword.
_NOT_A_KEYWORD = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b.*\b(?:instructions?|prompts?|rules|above|previous)\b"
    r"|\b(?:system|developer) (?:prompt|message)\b|\byou are (?:now|an?)\b|\bas an ai\b|\bassistant\b"
    r"|https?|www\.|\.com\b|\bjson\b|\bkeywords?\b",
    re.IGNORECASE,
)
_MARKUP = re.compile(r"<\s*/?\s*[a-z!?]|[{}]|&#?\w+;", re.IGNORECASE)
_FENCE = re.compile(r"```(?:json)?", re.IGNORECASE)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_LINE = re.compile(r"^\s*[-*\d.)\s]*\"?([A-Za-z_ ]{1,40})\"?\s*[:=]\s*(.+?)\s*$")


def reads_like_instruction(text: str) -> bool:
    """Whether `text` addresses a language model (an injection, a chat artefact) rather than naming a thing."""
    return bool(_NOT_A_KEYWORD.search(text))


@dataclass(frozen=True)
class Parsed:
    """Keywords per field, normalised; `repaired` when the text was not exactly the declared shape."""

    fields: dict[str, list[str]]
    repaired: bool

    @property
    def words(self) -> list[str]:
        return list(dict.fromkeys(w for words in self.fields.values() for w in words))


def normalise(words: Iterable[object], limit: int | None = None) -> list[str]:
    """Keywords as they may reach a diffusion prompt: lower-case, cleaned, at most MAX_KEYWORD_CHARS and
    MAX_KEYWORD_WORDS, something a designer could draw (letters, not an instruction or a URL), no repeats."""
    out: list[str] = []
    for word in words:
        if not isinstance(word, str | int | float) or isinstance(word, bool):
            continue
        if isinstance(word, str) and _MARKUP.search(word):
            continue  # markup or code is never a keyword, whatever is left after stripping it
        text = clean_keyword(word, max_chars=MAX_KEYWORD_CHARS * 4)
        text = re.sub(r"[^\w\s&+/.,'-]", " ", text).replace(",", " ")
        text = " ".join(text.split()).strip(" .-/&+")
        if not text or not re.search(r"[^\W\d_]", text) or _NOT_A_KEYWORD.search(text):
            continue
        if len(text.split()) > MAX_KEYWORD_WORDS or len(text) > MAX_KEYWORD_CHARS:
            continue  # a sentence is not a keyword; cutting one would make up a new phrase
        if text not in out:
            out.append(text)
        if limit is not None and len(out) >= limit:
            break
    return out


def parse_answer(text: str | None, fields: Sequence[str], per_field: int) -> Parsed | None:
    """The answer as {field: keywords} for the declared `fields`, or None when nothing usable is in it."""
    if not text or not text.strip():
        return None
    value, repaired = _json_object(text)
    if value is None:
        value, repaired = _lines(text, fields), True
    wanted = {_key(f): f for f in fields}
    result: dict[str, list[str]] = {f: [] for f in fields}
    for key, raw in value.items():
        field = wanted.get(_key(key))
        if field is None:
            repaired = True
            continue
        if isinstance(raw, str):
            raw, repaired = raw.split(","), True
        elif not isinstance(raw, list) or not all(isinstance(w, str) for w in raw):
            raw, repaired = (raw if isinstance(raw, list) else []), True
        result[field] = normalise(raw, per_field)
    parsed = Parsed(result, repaired)
    return parsed if parsed.words else None


def parse_text_answer(text: str | None, field: str) -> tuple[str | None, bool]:
    """The string under `field` of the answer's JSON object, repaired as `parse_answer` repairs, and whether
    it needed repair; None when there is no such string. The caller checks what the string says."""
    if not text or not text.strip():
        return None, False
    value, repaired = _json_object(text)
    if value is None:
        return None, True
    found = next((raw for key, raw in value.items() if _key(key) == _key(field)), None)
    if isinstance(found, list) and found and all(isinstance(part, str) for part in found):
        found, repaired = " ".join(found), True
    return (found if isinstance(found, str) and found.strip() else None), repaired or set(value) != {field}


def reads_like_instruction_or_markup(text: str) -> bool:
    """Whether `text` (a headline, any copy) is markup, or addresses a model rather than a person."""
    return bool(_MARKUP.search(text)) or reads_like_instruction(text)


def _key(name: object) -> str:
    return re.sub(r"[^a-z]", "", str(name).lower())


def _json_object(text: str) -> tuple[dict | None, bool]:
    """The first JSON object in `text`, with `repaired` set when it needed any help."""
    stripped = text.strip()
    try:
        value = json.loads(stripped)
        if isinstance(value, dict):
            return value, False
    except ValueError:
        pass
    start = stripped.find("{")
    if start < 0:
        return None, True
    body = _FENCE.sub("", stripped[start:])
    decoder = json.JSONDecoder()
    for candidate in (body, _close(_TRAILING_COMMA.sub(r"\1", body))):
        for attempt in (candidate, _single_to_double_quotes(candidate)):
            try:
                value, _ = decoder.raw_decode(attempt)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value, True
    return None, True


def _single_to_double_quotes(text: str) -> str:
    return text.replace("'", '"') if '"' not in text else text


def _close(text: str) -> str:
    """Close what an answer cut off by the token limit left open: a string, then brackets."""
    stack: list[str] = []
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append("}" if char == "{" else "]")
        elif char in "}]" and stack:
            stack.pop()
    if not stack and not in_string:
        return text
    text = text + '"' if in_string else text
    # A dangling `"key"` or `"key":` or `,` cannot be completed: drop it before closing.
    text = re.sub(r'(?:,\s*"[^"]*"\s*:?\s*|,\s*|:\s*)$', "", text.rstrip())
    text = re.sub(r'([{,]\s*)"[^"]*"\s*:?\s*$', r"\1", text).rstrip().rstrip(",")
    return _TRAILING_COMMA.sub(r"\1", text + "".join(reversed(stack)))


def _lines(text: str, fields: Sequence[str]) -> dict[str, list[str]]:
    """`genre: noir, drama` lines, for answers that ignored the JSON shape but kept its content."""
    wanted = {_key(f) for f in fields}
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and _key(match.group(1)) in wanted:
            found[match.group(1)] = [w.strip(" \"'[]") for w in match.group(2).split(",")]
    return found
