"""Text from the data is data: cleaned and capped before it reaches a prompt, a report or a log.

Missing is missing: None, NaN (float or numpy), pandas' NA and NaT, and text that only spells a missing value
("nan", "None", "null", ...) become no text at all, never the word. Markup and terminal control codes that
leaked into a catalog ("<script>", "\x1b[31m", or its remnant "[31m") are cut out.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
_SPACE = re.compile(r"\s+")
# What pandas, numpy, JSON and SQL exports write for a missing value, compared case-blind and trimmed.
NULL_LIKE = frozenset({"", "nan", "none", "null", "nat", "<na>", "n/a"})
# Terminal colour codes: the whole escape sequence, or the remnant an earlier cleaner left behind once
# the ESC itself was gone ("[31m", "[1;33m", "[0m").
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]|\[[0-9]{1,3}(?:;[0-9]{1,3})*m")
# Script and style elements lose their content too; any other HTML tag only loses the tag. Only HTML's
# own element names count as tags, so a title such as "Hamlet <Director's Cut>" keeps its words.
_HTML_ELEMENTS = (
    "a|abbr|b|big|blockquote|body|br|button|center|code|div|em|embed|font|form|h[1-6]|head|hr|html|i|iframe|"
    "img|input|label|li|link|meta|nav|noscript|object|ol|option|p|pre|s|script|section|select|small|span|"
    "strike|strong|style|sub|sup|svg|table|tbody|td|textarea|th|thead|title|tr|u|ul|video|audio|source|"
    "article|header|footer|main|aside|picture|figure|figcaption|frame|frameset|base|marquee|blink"
)
_SCRIPT_ELEMENT = re.compile(r"<(script|style)\b[^>]*>.*?(?:</\1\s*>|$)", re.IGNORECASE | re.DOTALL)
_HTML_TAG = re.compile(rf"</?(?:{_HTML_ELEMENTS})(?:\s[^<>]*)?/?>|<!--.*?(?:-->|$)", re.IGNORECASE | re.DOTALL)


def is_missing(value: object) -> bool:
    """Whether `value` stands for no value: None, NaN, pd.NA, NaT, or text such as "nan" or "null"."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip().lower() in NULL_LIKE
    if isinstance(value, float):
        return value != value  # NaN is the one float unequal to itself
    # pandas' NA and NaT, numpy's NaN, without importing either.
    if type(value).__name__ in {"NAType", "NaTType"}:
        return True
    try:
        return bool(value != value)
    except (TypeError, ValueError):  # NA-like objects that refuse comparison, arrays
        return False


def strip_markup(text: str) -> str:
    """`text` without HTML tags (script and style with their content), comments and terminal colour
    codes. Entities are decoded first, so "&lt;script&gt;" cannot slip through as text."""
    if "&" in text:
        text = html.unescape(text)
    if "<" in text:
        text = _HTML_TAG.sub(" ", _SCRIPT_ELEMENT.sub(" ", text))
    if "[" in text or "\x1b" in text:
        text = _ANSI.sub("", text)
    return text


def clean_text(value: object, max_chars: int = 200) -> str:
    """One line of printable text: NFC-normalised, markup, control and bidi characters removed, capped.
    A missing value (see `is_missing`) is the empty string."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if is_missing(value):
        return ""
    text = unicodedata.normalize("NFC", str(value))
    text = _SPACE.sub(" ", _CONTROL.sub(" ", strip_markup(text))).strip()
    if text.lower() in NULL_LIKE:  # "<b>null</b>" is still a missing value
        return ""
    if len(text) > max_chars:
        text = text[: max_chars - 1].rstrip() + "…"
    return text


def clean_keyword(value: object, max_chars: int = 40) -> str:
    """A keyword: lower-case, cleaned, without the delimiters our prompts and lists use."""
    text = clean_text(value, max_chars=max_chars * 2).lower()
    text = re.sub(r"[\"'`<>{}\[\]|;:]", " ", text)
    text = _SPACE.sub(" ", text).strip()[:max_chars].strip()
    return "" if text in NULL_LIKE else text


def split_categories(value: object) -> list[str]:
    """Categories as a list: from '|'-separated text (the warehouse's form) or a list; missing ones and
    parts that spell a missing value are left out."""
    if isinstance(value, str):
        parts: Iterable[object] = value.split("|")
    elif is_missing(value):
        return []
    elif isinstance(value, Iterable) and not isinstance(value, bytes | dict):
        parts = [p for part in value for p in (part.split("|") if isinstance(part, str) else [part])]
    else:
        parts = str(value).split("|")
    return list(dict.fromkeys(c for c in (clean_text(part, 40) for part in parts) if c))


class Denylist:
    """Words and phrases that must never reach a prompt, matched as whole words.

    A denied "war" removes "war", "war drama" and "post-war", but not "warm light" or "award"; a denied
    phrase ("red wine") matches across any run of spaces, hyphens or underscores ("red-wine"). Matching is
    case-blind and sees through compatibility forms (full-width letters, ligatures).
    """

    def __init__(self, entries: Iterable[str] = ()):
        phrases = sorted({" ".join(_fold(e).split()) for e in entries} - {""}, key=lambda p: (-len(p), p))
        self.entries = tuple(phrases)
        self._pattern = (
            re.compile(r"(?<!\w)(?:" + "|".join(_phrase_pattern(p) for p in phrases) + r")(?!\w)")
            if phrases
            else None
        )

    def __bool__(self) -> bool:
        return self._pattern is not None

    def denies(self, text: object) -> bool:
        """Whether `text` holds a denied word or phrase anywhere."""
        return self._pattern is not None and self._pattern.search(_fold(text)) is not None

    def keep(self, words: Iterable[str]) -> list[str]:
        """`words` (keywords, descriptor words) without those that hold a denied word: a keyword is dropped
        whole, since what is left of a phrase would say something else."""
        return [word for word in words if not self.denies(word)]

    def redact(self, text: str) -> str:
        """`text` (a title, a style) with every denied word or phrase cut out and the separators it leaves
        behind tidied; the rest stays as written."""
        if self._pattern is None or not text:
            return text
        folded = _fold(text)
        # Folding may change lengths (a ligature, "ß"): then positions are the folded text's, so cut that.
        source = text if len(folded) == len(text) else folded
        pieces, last = [], 0
        for match in self._pattern.finditer(folded):
            pieces.append(source[last : match.start()])
            last = match.end()
        pieces.append(source[last:])
        tidy = re.sub(r"\s+([,;:])", r"\1", _SPACE.sub(" ", "".join(pieces)))
        return re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", tidy).strip(" ,;:-")


def _fold(value: object) -> str:
    """Case-blind, compatibility-normalised text; same length as the input unless a character folds to
    several."""
    return unicodedata.normalize("NFKC", str(value or "")).casefold()


def _phrase_pattern(phrase: str) -> str:
    return r"[\s_\-]+".join(re.escape(word) for word in re.split(r"[\s_\-]+", phrase) if word)
