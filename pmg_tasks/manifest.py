"""The manifest: what recommender teams integrate against, column by column (docs/manifest.md says it for
people; this module says it for code, and the doc's table is checked against it).

One row per planned creative (campaign x user x target item x rank). The run date and the campaign are the
`ds=` and `campaign=` partitions of the path, not columns of the file. Nothing in a manifest is a wall-clock
time, and its rows are in a fixed order, so a rerun of a date writes the same bytes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

# (name, Arrow type, meaning). The types are what the file holds, whatever pandas inferred on the way.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("campaign_id", "string", "the campaign (also the `campaign=` partition)"),
    ("user_id", "string", "the user this row is for"),
    ("item_id", "string", "the target item the creative shows"),
    ("rank", "int64", "1 = this user's best creative for the item, by z; 1..variants"),
    ("creative_id", "string", "stable hash of request signature, seed and model versions; the PNG's name"),
    ("image_key", "string", "the PNG's key below the store root: creatives/ds=…/campaign=…/<creative_id>.png"),
    ("image_uri", "string", "the PNG's full address: s3://bucket/prefix/… or file:///…"),
    ("segment_id", "string", "the taste segment whose generation the creative came from"),
    ("personalization", "string", "segment (one generation shared by a segment) or user (one per user)"),
    ("preference_tokens", "list<string>", "the DPPMG preference tokens in the prompt, e.g. <pref_text_0_3>"),
    ("seed", "int64", "the diffusion seed of this candidate (fixed by the signature)"),
    ("d_p", "float64", "CLIP similarity to this user's preference keywords, in (0, 1]"),
    ("d_t", "float64", "CLIP similarity to the target item (keywords or catalog image), in (0, 1]"),
    ("consistency", "float64", "CLIP similarity of the image to its headline, in (0, 1]"),
    ("z", "float64", "alpha*log d_p + (1-alpha)*log d_t (+ consistency_weight*log consistency); rank by it"),
    ("alpha", "float64", "the campaign's weight of taste against item in z"),
    ("consistency_weight", "float64", "the campaign's weight of image-headline agreement in z"),
    ("headline", "string", "the headline shown beside the image (LLM or template)"),
    ("prompt", "string", "the prompt actually sent to the text encoder, after the token budget"),
    ("prompt_tokens", "int64", "the prompt's length in text-encoder tokens"),
    ("negative_prompt", "string", "the negative prompt actually sent"),
    ("preference_keywords", "list<string>", "this user's preference keywords (what d_p compares with)"),
    ("target_keywords", "list<string>", "the target item's keywords (what d_t compares with)"),
    ("signature", "string", "hash of the generation's recipe; rows sharing it share one generation"),
    ("diffusion_model", "string", "version of the diffusion model (models/versions.py: <name>-<12 hex>)"),
    ("clip_model", "string", "version of the CLIP scorer"),
    ("llm_model", "string", "version of the LLM that wrote the headline; `template` where none did"),
    ("token_embeddings", "string", "version of the preference-token rows; no-tokens where none were used"),
    ("safety", "string", "passed (the user's best) or replaced (a flagged candidate gave way to the next)"),
)  # fmt: skip
COLUMN_NAMES = [name for name, _, _ in COLUMNS]
SAFETY_VALUES = ("passed", "replaced")
PERSONALIZATION_VALUES = ("segment", "user")
# Sorted by these, so equal inputs give equal files.
ORDER = ["campaign_id", "user_id", "item_id", "rank"]
# File-level metadata: whether the campaign's manifest is complete, and which requests are not in it.
COMPLETE_KEY = b"pmg.complete"
MISSING_KEY = b"pmg.missing_requests"


def arrow_type(kind: str) -> pa.DataType:
    import pyarrow as pa

    if kind.startswith("list<"):
        return pa.list_(arrow_type(kind[len("list<") : -1]))
    return {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}[kind]


def schema(missing: list[dict] | None = None) -> pa.Schema:
    """The manifest's Arrow schema; `missing` (the requests a partial publish lacks) goes in its metadata."""
    import pyarrow as pa

    metadata = {COMPLETE_KEY: b"true" if not missing else b"false", MISSING_KEY: json.dumps(missing or []).encode()}
    return pa.schema([(name, arrow_type(kind)) for name, kind, _ in COLUMNS], metadata=metadata)


def to_table(frame: pd.DataFrame, missing: list[dict] | None = None) -> pa.Table:
    """One campaign's manifest rows as the typed table that is written; refuses values outside the contract."""
    import pyarrow as pa

    absent = [name for name in COLUMN_NAMES if name not in frame.columns]
    if absent:
        raise ValueError(f"manifest rows lack columns {absent}; the manifest has {COLUMN_NAMES}")
    for column, allowed in (("safety", SAFETY_VALUES), ("personalization", PERSONALIZATION_VALUES)):
        wrong = sorted(set(frame[column]) - set(allowed))
        if wrong:
            raise ValueError(f"manifest column {column} holds {wrong}; it may hold only {list(allowed)}")
    ordered = frame.sort_values(ORDER, kind="stable", ignore_index=True)[COLUMN_NAMES]
    return pa.Table.from_pandas(ordered, schema=schema(missing), preserve_index=False).replace_schema_metadata(
        schema(missing).metadata
    )


def missing_requests(table: pa.Table | pa.Schema) -> list[dict]:
    """The requests (user_id, item_id) a partial publish left out of this manifest; [] when complete."""
    metadata = (table.schema if hasattr(table, "schema") else table).metadata or {}
    return json.loads(metadata.get(MISSING_KEY, b"[]"))
