"""Text from the data is data: cleaned and capped before it reaches a prompt, a report or a log."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

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
