"""Text from the data is data: cleaned and capped before it reaches a prompt, a report or a log."""

from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
_SPACE = re.compile(r"\s+")


def clean_text(value: object, max_chars: int = 200) -> str:
    """One line of printable text: NFC-normalised, control and bidi characters removed, capped."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = unicodedata.normalize("NFC", str(value))
    text = _SPACE.sub(" ", _CONTROL.sub(" ", text)).strip()
    if len(text) > max_chars:
        text = text[: max_chars - 1].rstrip() + "…"
    return text


def clean_keyword(value: object, max_chars: int = 40) -> str:
    """A keyword: lower-case, cleaned, without the delimiters our prompts and lists use."""
    text = clean_text(value, max_chars=max_chars * 2).lower()
    text = re.sub(r"[\"'`<>{}\[\]|;:]", " ", text)
    return _SPACE.sub(" ", text).strip()[:max_chars].strip()


def split_categories(value: object) -> list[str]:
    return [c for c in (clean_text(part, 40) for part in str(value or "").split("|")) if c]
