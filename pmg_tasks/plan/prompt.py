"""A generation prompt, and fitting it into the text encoder's budget (PMG's composition: the target item
first, coloured by the audience's taste).

    <style>, <title>, <target keywords...>, in the taste of <pref tokens...>, <preference words...>

The budget is counted with the diffusion pipeline's own tokenizer (77 tokens for CLIP, start and end markers
included), the preference tokens each one word. The style, the title and the preference tokens are kept
whole; when the prompt is too long the lowest-ranked keyword goes first, from whichever of the two keyword
lists reaches further down its ranking (the target's first on a tie), and the drops are counted. So the
personalization is never the part that falls silently off the end, as CLIP's truncation would make it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace


class PromptTooLong(ValueError):
    """What must stay whole (style, title, tokens) does not fit the text encoder's budget."""


@dataclass(frozen=True)
class PromptParts:
    style: str
    title: str
    target_words: tuple[str, ...]
    preference_tokens: tuple[str, ...]
    preference_words: tuple[str, ...]

    def text(self) -> str:
        head = ", ".join(part for part in (self.style, self.title, *self.target_words) if part)
        taste = " ".join(self.preference_tokens)
        words = ", ".join(self.preference_words)
        if not taste and not words:
            return head
        clause = "in the taste of " + ", ".join(part for part in (taste, words) if part)
        return f"{head}, {clause}" if head else clause


@dataclass(frozen=True)
class FittedPrompt:
    parts: PromptParts
    text: str
    tokens: int
    dropped_keywords: int


def token_count(tokenizer, text: str) -> int:
    """Tokens `text` costs the text encoder, its start and end markers included."""
    return len(tokenizer(text, truncation=False, verbose=False)["input_ids"])


def fit_prompt(parts: PromptParts, tokenizer, budget: int | None = None) -> FittedPrompt:
    """`parts` as a prompt within `budget` tokens (default: the tokenizer's model_max_length), dropping the
    lowest-ranked keywords first. Raises PromptTooLong when style, title and tokens alone do not fit."""
    budget = budget or tokenizer.model_max_length
    dropped = 0
    while (count := token_count(tokenizer, parts.text())) > budget:
        target, preference = parts.target_words, parts.preference_words
        if not target and not preference:
            raise PromptTooLong(
                f"the style, title and preference tokens alone take {count} of {budget} tokens: "
                f"shorten the campaign's style ({parts.style!r})"
            )
        # The list whose last keyword ranks lower (a longer list) gives it up; the target's on a tie.
        if len(target) >= len(preference):
            parts = replace(parts, target_words=target[:-1])
        else:
            parts = replace(parts, preference_words=preference[:-1])
        dropped += 1
    return FittedPrompt(parts, parts.text(), count, dropped)


def fit_negative_prompt(phrases: Sequence[str], tokenizer, budget: int | None = None) -> str:
    """The negative prompt's comma-separated phrases, the trailing ones left out until it fits."""
    budget = budget or tokenizer.model_max_length
    kept = [p.strip() for p in phrases if p.strip()]
    while kept and token_count(tokenizer, ", ".join(kept)) > budget:
        kept.pop()
    return ", ".join(kept)
