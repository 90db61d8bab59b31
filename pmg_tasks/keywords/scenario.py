"""Scenarios: what to extract for one kind of creative, as data (`scenarios/<name>.yaml`).

A scenario names the attributes PMG extracts preference keywords for (a movie poster: genre, era, style,
mood, country), the task instruction, the integrate instruction, the target-item instruction and an output
example, the parts of PMG's prompt template. Its digest is part of the prompt version, so editing a scenario
re-extracts every user on the next night instead of serving keywords extracted under the old wording.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class Attribute(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME.pattern)
    description: str = Field(min_length=1, max_length=200)
    examples: tuple[str, ...] = Field(default=(), max_length=8)


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME.pattern)
    version: int = Field(ge=1)
    item_noun: str = Field(min_length=1, max_length=40, description="what the history lists: movies, products")
    task: str = Field(min_length=1, max_length=1000)
    attributes: tuple[Attribute, ...] = Field(min_length=1, max_length=12)
    integrate: str = Field(min_length=1, max_length=1000)
    target: str = Field(min_length=1, max_length=1000)
    target_example: tuple[str, ...] = Field(min_length=1, max_length=8)
    output_example: dict[str, tuple[str, ...]]
    # What the diffusion model should steer away from for this kind of creative; campaigns may override it.
    negative_prompt: str = Field("", max_length=300)

    @model_validator(mode="after")
    def _example_names_the_attributes(self) -> Scenario:
        names = [a.name for a in self.attributes]
        if len(set(names)) != len(names):
            raise ValueError(f"attribute names repeat: {names}")
        if set(self.output_example) != set(names):
            raise ValueError(f"output_example must have exactly the attributes {names}")
        return self

    @property
    def attribute_names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def digest(self) -> str:
        """A short hash of everything that shapes the LLM prompts (the negative prompt shapes only pixels,
        so editing it does not re-extract keywords)."""
        shaping = self.model_dump(mode="json", exclude={"negative_prompt"})
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:10]


def available_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIOS_DIR.glob("*.yaml"))


@functools.cache
def load_scenario(name: str) -> Scenario:
    """The scenario `scenarios/<name>.yaml`, validated."""
    import yaml

    if not _NAME.match(name) or not (SCENARIOS_DIR / f"{name}.yaml").is_file():
        raise ValueError(
            f"unknown keyword scenario {name!r}; choose one of {available_scenarios()} (PMG_KEYWORDS__SCENARIO)"
        )
    raw = yaml.safe_load((SCENARIOS_DIR / f"{name}.yaml").read_text())
    scenario = Scenario.model_validate(raw)
    if scenario.name != name:
        raise ValueError(f"scenarios/{name}.yaml names itself {scenario.name!r}")
    return scenario


# Words that mark a catalog as one scenario's kind of item, looked for in titles and categories. A catalog
# that matches neither is a shop, and gets product_banners.
SCENARIO_SIGNS = {
    "movie_posters": frozenset(
        """movie movies film films cinema dvd blu-ray drama comedy thriller horror documentary sci-fi romance
        animation western musical noir fantasy mystery imax""".split()
    ),
    "fashion": frozenset(
        """dress dresses shirt shirts t-shirt tee blouse jeans trousers pants shorts skirt skirts
        jacket jackets coat coats blazer sweater sweaters hoodie hoodies cardigan jumper leggings socks
        sneakers shoes boots sandals heels loafers scarf handbag handbags tote apparel clothing
        fashion swimsuit swimwear bikini lingerie bra underwear pajamas outfit menswear womenswear""".split()
    ),
}
SHOP_SCENARIO = "product_banners"
_YEAR_IN_TITLE = re.compile(r"\((?:19|20)\d\d\)\s*$")
_SIGN_SHARE = 0.3


def suggest_scenario(items: list[tuple[object, object]]) -> tuple[str, str]:
    """(scenario name, why) for a sample of a catalog's (title, categories): the scenario whose signs most
    items carry, when at least 30% carry them; else product_banners."""
    from pmg_tasks.text_safety import clean_text, split_categories

    matches = {name: 0 for name in SCENARIO_SIGNS}
    for title, categories in items:
        text = clean_text(title, 300)
        words = set(re.findall(r"[\w-]+", text.lower()))
        words |= {w for c in split_categories(categories) for w in re.findall(r"[\w-]+", c.lower())}
        for name, signs in SCENARIO_SIGNS.items():
            if words & signs or (name == "movie_posters" and _YEAR_IN_TITLE.search(text)):
                matches[name] += 1
    total = len(items)
    best = max(matches, key=lambda name: (matches[name], name))
    if total and matches[best] / total >= _SIGN_SHARE:
        noun = load_scenario(best).item_noun
        return best, f"{matches[best]} of {total} items read like {noun}"
    near = ", ".join(f"{matches[n]} like {load_scenario(n).item_noun}" for n in sorted(matches))
    return SHOP_SCENARIO, f"of {total} items, {near}: a shop's products"
