"""The catalog backend: keywords straight from item metadata, no model.

An item's keywords say what it is before who made it: first the phrases of its title that are distinctive in
its catalog, then its categories, then its attribute values (brand among them). A title is read as noun
phrases, runs of words between punctuation, stop words, numbers and measurements, with the item's brand
(and any catalog brand opening the title) taken out, so "Wilton 11106 Bench Vise, 6-Inch Jaw" reads as
"bench vise" and "jaw". Phrases are ranked by TF-IDF over the catalog's titles: a word most titles share says
little about one item. The statistics (`CatalogVocabulary`) are computed once per stage run, from the whole
catalog, and every item and history is read against them.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pmg_tasks.histories import item_keywords, parse_attributes
from pmg_tasks.keywords.parsing import reads_like_instruction
from pmg_tasks.text_safety import clean_keyword, clean_text, split_categories

BACKEND_ID = "catalog-v2"
# How many title phrases lead an item's keywords; the rest of its title phrases follow its attributes.
TITLE_PHRASES = 3
MAX_PHRASE_WORDS = 3
# Attributes that name who made an item rather than what it is.
BRAND_ATTRIBUTES = ("brand", "manufacturer", "maker", "make", "vendor", "label", "publisher", "studio")

STOP_WORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers him his how i if in into is it its itself just me more most my no nor not now of off on
    once only or other our ours out over own same she should so some such than that the their theirs them then
    there these they this those through to too under until up upon very via was we were what when where which
    while who whom why will with within without would you your yours
    new pack pcs pc piece pieces count ct assorted includes including included size sizes qty quantity
    """.split()
)
# Units that turn a number into a measurement ("6-inch", "1.75mm", "2 pack"): none of them says what a
# product is. Kept short on purpose: "3d" and "4k" are not measurements.
_UNITS = (
    "mm|cm|m|km|in|inch|inches|ft|feet|foot|yd|oz|fl|lb|lbs|pound|pounds|g|gr|gram|grams|kg|mg|ml|l|liter|litre|"
    "liters|litres|gal|gallon|gallons|qt|pt|pk|pack|packs|pcs|pc|piece|pieces|count|ct|x|w|watt|watts|v|volt|"
    "volts|mah|ah|gb|tb|mb|hz|khz|mhz|ghz|rpm|psi|sq|sqft|degree|degrees|percent|pct|s|th|st|nd|rd|ply"
)
_UNIT = re.compile(_UNITS, re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+(?:['’+.\-][^\W_]+)*")
_MEASUREMENT = re.compile(rf"[\d.,/\-]*\d[\d.,/\-]*(?:-?(?:{_UNITS}))?", re.IGNORECASE)
# A model or part number: letters and digits mixed, with at least three digits ("x200", "sm-g960u").
_CODE = re.compile(r"(?=(?:[^\d]*\d){3})[a-z0-9\-./]+", re.IGNORECASE)
# Between two words, anything but spaces ends a phrase: "Vise, 6-Inch Jaw" is two phrases.
_BREAK = re.compile(r"[^\s]")


@dataclass(frozen=True)
class CatalogVocabulary:
    """Title statistics of one catalog: how many titles hold each word, and the catalog's brands."""

    titles: int = 0
    document_frequency: Mapping[str, int] = field(default_factory=dict)
    brands: frozenset[str] = frozenset()

    @classmethod
    def from_items(cls, items: Iterable[Mapping]) -> CatalogVocabulary:
        """One pass over the catalog (rows with `title` and `attributes`)."""
        frequency: Counter[str] = Counter()
        brands: set[str] = set()
        titles = 0
        for item in items:
            brand = item_brand(item)
            if brand:
                brands.add(brand)
            words = {w for w in _words(clean_text(item.get("title"), 300).lower())}
            if words:
                titles += 1
                frequency.update(words)
        return cls(titles=titles, document_frequency=dict(frequency), brands=frozenset(brands))

    @functools.cached_property
    def brands_by_first_word(self) -> dict[str, list[str]]:
        """Brands by their first word, longest first: a title is matched against a few, not all."""
        index: dict[str, list[str]] = {}
        for brand in sorted(self.brands, key=lambda b: (-len(b), b)):
            index.setdefault(brand.split()[0], []).append(brand)
        return index

    def idf(self, word: str) -> float:
        """Smoothed inverse document frequency: 1 for a word every title has, more for rarer ones."""
        return math.log((1 + self.titles) / (1 + self.document_frequency.get(word, 0))) + 1.0

    def to_json(self) -> str:
        return json.dumps(
            {"titles": self.titles, "document_frequency": dict(sorted(self.document_frequency.items())),
             "brands": sorted(self.brands)}
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> CatalogVocabulary:
        raw = json.loads(text)
        return cls(titles=int(raw["titles"]), document_frequency={str(k): int(v) for k, v in
                   raw["document_frequency"].items()}, brands=frozenset(raw["brands"]))


EMPTY_VOCABULARY = CatalogVocabulary()


def item_brand(item: Mapping) -> str:
    """The item's brand as a keyword ('' when its attributes name none)."""
    attributes = parse_attributes(item.get("attributes"))
    for name in BRAND_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str):
            brand = clean_keyword(value)
            if brand:
                return brand
    return ""


def title_phrases(title: object, vocabulary: CatalogVocabulary = EMPTY_VOCABULARY, brand: str = "") -> list[str]:
    """The noun phrases of `title`, most distinctive in the catalog first (ties: as the title orders them).
    A title that reads like an instruction to a model gives none: its words are not the product's."""
    text = clean_text(title, 300).lower()
    if reads_like_instruction(text):
        return []
    phrases = []
    for run in _runs(text, _brand_words(text, brand, vocabulary)):
        phrases += _split_long(run)
    unique = list(dict.fromkeys(" ".join(p) for p in phrases))
    scores = {p: sum(vocabulary.idf(w) for w in p.split()) / math.sqrt(len(p.split())) for p in unique}
    ranked = sorted(range(len(unique)), key=lambda i: (-scores[unique[i]], i))
    return [clean_keyword(unique[i]) for i in ranked if clean_keyword(unique[i])]


def target_item_keywords(
    item: Mapping, limit: int = 8, vocabulary: CatalogVocabulary = EMPTY_VOCABULARY
) -> list[str]:
    """An item's own words: the distinctive phrases of its title, then its categories, then its attribute
    values, then the rest of its title."""
    phrases = title_phrases(item.get("title"), vocabulary, item_brand(item))
    words = phrases[:TITLE_PHRASES]
    words += [clean_keyword(c) for c in split_categories(item.get("categories"))]
    words += item_keywords(item.get("attributes"), limit=limit)
    words += phrases[TITLE_PHRASES:]
    return list(dict.fromkeys(w for w in words if w))[:limit]


def preference_keywords(
    history_items: Sequence[Mapping], limit: int, vocabulary: CatalogVocabulary = EMPTY_VOCABULARY
) -> list[str]:
    """Keywords that recur across a user's history, stronger engagements counting more.

    `history_items` is ordered strongest first (as histories ranks them), so item i weighs n - i.
    """
    scores: Counter[str] = Counter()
    n = len(history_items)
    for position, item in enumerate(history_items):
        for word in target_item_keywords(item, vocabulary=vocabulary):
            scores[word] += n - position
    # Ties broken alphabetically so the same history always yields the same list.
    return [word for word, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


# -- reading a title -----------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return [m.group() for m in _WORD.finditer(text) if _is_content(m.group())]


def _is_content(word: str) -> bool:
    return not (word in STOP_WORDS or _MEASUREMENT.fullmatch(word) or _CODE.fullmatch(word) or len(word) < 2)


def _brand_words(text: str, brand: str, vocabulary: CatalogVocabulary) -> list[tuple[int, int]]:
    """Character spans of `text` to leave out: the item's brand anywhere, and a catalog brand that opens
    the title (another maker's name inside a title, "case for Apple iPhone", is what the item fits)."""
    spans = []
    if brand:
        spans += [m.span() for m in re.finditer(rf"(?<!\w){re.escape(brand)}(?!\w)", text)]
    opening = text.lstrip(" -–|:")
    first = opening.split(maxsplit=1)[0] if opening.strip() else ""
    for candidate in vocabulary.brands_by_first_word.get(first, ()):
        if opening.startswith(candidate) and not opening[len(candidate) : len(candidate) + 1].isalnum():
            start = len(text) - len(opening)
            spans.append((start, start + len(candidate)))
            break
    return spans


def _runs(text: str, skip: list[tuple[int, int]]) -> list[list[str]]:
    """Runs of content words: a stop word, a number, a brand or punctuation between two words ends one. A
    unit right after a number belongs to it ("16 oz", "1 kg"), so it goes too."""
    runs: list[list[str]] = [[]]
    last_end, after_number = 0, False
    for match in _WORD.finditer(text):
        word, (start, end) = match.group(), match.span()
        skipped = any(s <= start and end <= e for s, e in skip)
        content = not skipped and _is_content(word) and not (after_number and _UNIT.fullmatch(word))
        if not content or _BREAK.search(text[last_end:start]):
            runs.append([])
        if content:
            runs[-1].append(word)
        last_end, after_number = end, bool(_MEASUREMENT.fullmatch(word))
    return [run for run in runs if run]


def _split_long(run: list[str]) -> list[list[str]]:
    """A run of more than MAX_PHRASE_WORDS words as phrases of at most that many: English puts the head
    noun last ("pla 3d printer filament" is a "3d printer filament" that is "pla"), so the tail is kept whole."""
    phrases = []
    while len(run) > MAX_PHRASE_WORDS:
        phrases.append(run[-MAX_PHRASE_WORDS:])
        run = run[:-MAX_PHRASE_WORDS]
    return [*phrases, run] if run else phrases
