"""PMG's keyword extraction over any text generator, one batch per step (Shen et al., section 3.2).

    1. attributes: every user's history -> keywords per scenario attribute   (one batched call)
    2. integrate:  each user's per-attribute keywords -> the final set        (one batched call)
    3. target:     every target item's title, categories, description -> keywords (one batched call)

Each answer is parsed as untrusted text (parsing.py). An `Extraction` says how it went: `ok`, `repaired`
(usable after repair), `unparsable` (the model answered, but nothing usable: the caller uses the catalog) or
`failed` (no answer came: a timeout or a server error). All but `failed` are deterministic for a given prompt
and model, so they may be cached; a `failed` one is asked again on the next night.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest

from pmg_tasks.keywords.backends import Completion, Request, TextGenerator
from pmg_tasks.keywords.parsing import Parsed, normalise, parse_answer
from pmg_tasks.keywords.prompts import (
    KEYWORDS_PER_ATTRIBUTE,
    attributes_request,
    integrate_request,
    target_request,
)
from pmg_tasks.keywords.scenario import Scenario

CACHEABLE = ("ok", "repaired", "unparsable")


@dataclass
class Extraction:
    status: str
    keywords: list[str] = field(default_factory=list)
    attributes: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"status": self.status, "keywords": self.keywords, "attributes": self.attributes}

    @classmethod
    def from_json(cls, value: Mapping) -> Extraction:
        """A cache entry, read back as untrusted as it was written: a bad one reads as unparsable."""
        status = value.get("status") if value.get("status") in CACHEABLE else "unparsable"
        attributes = value.get("attributes") if isinstance(value.get("attributes"), dict) else {}
        return cls(
            status=status,
            keywords=normalise(value.get("keywords") or []),
            attributes={str(k): normalise(v) for k, v in attributes.items() if isinstance(v, list)},
        )


@dataclass
class Usage:
    """What the model was asked for: the costs a night reports."""

    model_calls: int = 0
    failed_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: list[str] = field(default_factory=list)

    def record(self, completions: Sequence[Completion]) -> None:
        self.model_calls += len(completions)
        for completion in completions:
            self.prompt_tokens += completion.prompt_tokens
            self.completion_tokens += completion.completion_tokens
            if completion.text is None:
                self.failed_calls += 1
                if len(self.errors) < 5:
                    self.errors.append(completion.error)


def call(generator: TextGenerator, requests: Sequence[Request], usage: Usage) -> list[Completion]:
    if not requests:
        return []
    completions = generator.generate(requests)
    if len(completions) != len(requests):
        raise RuntimeError(f"{generator.name} answered {len(completions)} of {len(requests)} requests")
    usage.record(completions)
    return completions


def extract_preferences(
    generator: TextGenerator, scenario: Scenario, history_texts: Sequence[str], limit: int, max_tokens: int,
    usage: Usage,
) -> list[Extraction]:
    """Preference keywords for each history (PMG steps 1 and 2), one Extraction per history, in order."""
    names = scenario.attribute_names
    answers = call(generator, [attributes_request(scenario, text, max_tokens) for text in history_texts], usage)
    per_attribute: list[Parsed | None] = [parse_answer(a.text, names, KEYWORDS_PER_ATTRIBUTE) for a in answers]

    results = [Extraction("failed" if answer.text is None else "unparsable") for answer in answers]
    usable = [i for i, parsed in enumerate(per_attribute) if parsed is not None]
    integrated = call(
        generator, [integrate_request(scenario, per_attribute[i].fields, limit, max_tokens) for i in usable], usage
    )
    for i, answer in zip(usable, integrated, strict=True):
        attributes = per_attribute[i]
        final = parse_answer(answer.text, ["keywords"], limit)
        if final is not None:
            status = "repaired" if attributes.repaired or final.repaired else "ok"
            results[i] = Extraction(status, final.words, attributes.fields)
        else:
            # Step 2 said nothing usable: integrate locally, strongest keyword of each attribute first.
            status = "failed" if answer.text is None else "repaired"
            results[i] = Extraction(status, interleave(attributes.fields.values(), limit), attributes.fields)
    return results


def extract_targets(
    generator: TextGenerator, scenario: Scenario, items: Sequence[Mapping], limit: int, max_tokens: int,
    usage: Usage,
) -> list[Extraction]:
    """Target-item keywords for each item, in order."""
    answers = call(generator, [target_request(scenario, item, limit, max_tokens) for item in items], usage)
    results = []
    for answer in answers:
        parsed = parse_answer(answer.text, ["keywords"], limit)
        if parsed is None:
            results.append(Extraction("failed" if answer.text is None else "unparsable"))
        else:
            results.append(Extraction("repaired" if parsed.repaired else "ok", parsed.words))
    return results


def interleave(lists: Iterable[Sequence[str]], limit: int) -> list[str]:
    """First of each list, then second of each, ...: no attribute crowds out the others."""
    merged = [w for row in zip_longest(*lists) for w in row if w]
    return list(dict.fromkeys(merged))[:limit]
