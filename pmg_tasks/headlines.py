"""Stage 6b, headlines: a short personalized headline beside every generated image (DPPMG generates text and
image both; the consistency score c later measures how well a candidate agrees with it).

One headline per generation request, from the keyword stage's backend: an LLM answers with a declared JSON
shape (`{"headline": "..."}`), and the answer is capped, cleaned, refused when it reads like an instruction
or markup or holds a word the campaign denies, and cached by content like keywords (a night pays only for
what changed). The catalog backend, and any refused or failed answer, writes a template headline from the
title and the top keywords, so laptops and tests need no LLM.

Reads `generations.parquet`, writes `headlines.parquet` (signature, headline, source, llm_model: the version
of the LLM that wrote it, `template` where none did) and `stats/headlines.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pmg_tasks import layout
from pmg_tasks.store import open_store, read_frame, write_json, write_table
from pmg_tasks.text_safety import Denylist, clean_text

if TYPE_CHECKING:
    from pmg_tasks.keywords.backends import Request
    from pmg_tasks.settings import Settings

log = logging.getLogger(__name__)

# Bump when the wording or the shape below changes: cached headlines of the old one are not served.
HEADLINE_TEMPLATE_VERSION = 1
HEADLINE_SYSTEM = (
    "You write one short, vivid advertising headline for an item, aimed at an audience whose taste the "
    "keywords describe. No quotes, no hashtags, no emoji, at most {chars} characters."
)


def write_headlines(settings: Settings, ds: str) -> dict:
    """Write a headline for every generation request of `ds`; return counts for XCom."""
    from pmg_tasks.campaigns import campaigns_for_run

    store = open_store(settings)
    generations = read_frame(store, layout.run_key(ds, "generations.parquet"))
    denied = {c.campaign_id: c.denied for c in campaigns_for_run(settings, ds, store).active(ds)}
    chars = settings.generation.headline_chars
    rows = generations.to_dict("records")
    counts: Counter[str] = Counter(requests=len(rows))

    answers: dict[str, str | None] = {}
    if settings.keyword_backend != "catalog" and rows:
        answers = _ask_llm(settings, store, rows, chars, counts)
    llm_model = _llm_version(settings) if answers else "template"
    headlines = []
    for row in rows:
        denylist = denied.get(row["campaign_id"], Denylist())
        answer = answers.get(row["signature"])
        checked = accept_headline(answer, denylist, chars) if answer is not None else None
        if checked is not None:
            headline, source = checked, "llm"
        else:
            headline = template_headline(row["title"], row["preference_words"], row["target_keywords"], chars)
            source = "template" if settings.keyword_backend == "catalog" else "template_fallback"
        counts[source] += 1
        headlines.append({
            "signature": row["signature"], "headline": headline, "source": source,
            "llm_model": llm_model if source == "llm" else "template",
        })  # fmt: skip

    import pandas as pd

    frame = pd.DataFrame(headlines, columns=["signature", "headline", "source", "llm_model"])
    write_table(store, layout.run_key(ds, "headlines.parquet"), frame)
    stats = {"backend": settings.keyword_backend, **{k: int(v) for k, v in sorted(counts.items())}}
    write_json(store, layout.run_key(ds, "stats/headlines.json"), stats)
    log.info("headlines for %d generation requests: %s", len(frame), stats)
    return stats


def template_headline(title: str, preference_words: Sequence[str], target_words: Sequence[str], chars: int) -> str:
    """`Title: taste and taste` from the title and the top keywords (the audience's first), within
    `chars`; never empty, never a missing value."""
    words = [w for w in dict.fromkeys([*preference_words[:2], *target_words[:2]]) if w][:2]
    title = clean_text(title, chars)
    if not words:
        return title or "Picked for you"
    taste = " and ".join(words)
    return _cap(f"{title}: {taste}" if title else taste.capitalize(), chars)


def accept_headline(answer: str, denylist: Denylist, chars: int) -> str | None:
    """The model's headline made safe to print (one line, capped at a word), or None when it is no headline
    to print: empty, instruction-like, markup, or holding a denied word."""
    from pmg_tasks.keywords.parsing import reads_like_instruction_or_markup

    # Markup is judged on the raw answer: cleaning would strip it and hide that the model wrote code.
    if reads_like_instruction_or_markup(answer):
        return None
    text = clean_text(answer, chars * 2).strip(" \"'“”")
    if not text or reads_like_instruction_or_markup(text) or denylist.denies(text):
        return None
    if not any(char.isalpha() for char in text):
        return None
    return _cap(text, chars)


def headline_request(row: Mapping, chars: int) -> Request:
    """The LLM request for one generation's headline: the item and the audience's taste as data."""
    from pmg_tasks.keywords.backends import Request
    from pmg_tasks.keywords.prompts import DATA_RULE, data_block

    lines = [
        f"Item: {row['title']}",
        f"Item keywords: {', '.join(row['target_keywords'])}",
        f"Audience taste: {', '.join(row['preference_words'])}",
        f"Style: {row['style']}",
    ]
    schema = {
        "type": "object",
        "properties": {"headline": {"type": "string", "minLength": 1, "maxLength": chars}},
        "required": ["headline"],
        "additionalProperties": False,
    }
    return Request(
        system=f"{HEADLINE_SYSTEM.format(chars=chars)}\n{DATA_RULE}",
        user=f'Answer like this example: {{"headline": "Midnight noir, made for you"}}\n\n{data_block(lines)}',
        schema=schema, schema_name="headline", max_tokens=max(16, chars // 2),
    )  # fmt: skip


def headline_content_hash(row: Mapping, chars: int) -> str:
    """Changes when anything the headline request shows changes."""
    content = [row["title"], list(row["target_keywords"]), list(row["preference_words"]), row["style"], chars]
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]


def _ask_llm(settings: Settings, store, rows: list[dict], chars: int, counts: Counter) -> dict[str, str | None]:
    """Signature -> the model's raw headline (None where it gave none): cache first, the model for the rest,
    each distinct request asked once."""
    from pmg_tasks.keywords.backends import model_id_of, open_generator
    from pmg_tasks.keywords.cache import KeywordCache
    from pmg_tasks.keywords.extraction import Usage, call
    from pmg_tasks.keywords.parsing import parse_text_answer

    version = f"h{HEADLINE_TEMPLATE_VERSION}-c{chars}"
    cache = KeywordCache(store, "", version, model_id_of(settings), settings.keywords.concurrency)
    hashes = {row["signature"]: headline_content_hash(row, chars) for row in rows}
    found = cache.get_json_many("headlines", hashes.values())
    first = {}
    for row in rows:
        first.setdefault(hashes[row["signature"]], row)
    misses = [h for h in first if h not in found]
    counts.update(cache_hits=len(first) - len(misses), cache_misses=len(misses))
    if misses:
        usage = Usage()
        generator = open_generator(settings)
        try:
            completions = call(generator, [headline_request(first[h], chars) for h in misses], usage)
        finally:
            generator.close()
        counts.update(model_calls=usage.model_calls, failed_calls=usage.failed_calls)
        fresh = {}
        for content_hash, completion in zip(misses, completions, strict=True):
            if completion.text is None:
                continue  # no answer came: ask again next time, never cache a failure
            headline, _ = parse_text_answer(completion.text, "headline")
            fresh[content_hash] = {"headline": headline}
        cache.put_json_many("headlines", fresh)
        found |= fresh
    answers = {}
    for signature, content_hash in hashes.items():
        entry = found.get(content_hash)
        headline = entry.get("headline") if isinstance(entry, dict) else None
        answers[signature] = headline if isinstance(headline, str) else None
    return answers


def _llm_version(settings: Settings) -> str:
    """The LLM's version as models/versions.py names it (a local folder by its files, a served model by name)."""
    from pmg_tasks.keywords.backends import model_of
    from pmg_tasks.models.versions import model_version

    model = model_of(settings)
    # An empty name would be read as the working directory.
    return model_version(model) if model else settings.keyword_backend


def _cap(text: str, chars: int) -> str:
    if len(text) <= chars:
        return text
    cut = text[: chars - 1].rsplit(" ", 1)[0].rstrip(" ,:;-")
    return (cut or text[: chars - 1]) + "…"
