"""The generated_creatives table: a date's manifest rows upserted, on DuckDB and on a real PostgreSQL;
a rerun replaces, never duplicates."""

from __future__ import annotations

import pandas as pd
import pytest

from pmg_tasks import manifest as contract
from pmg_tasks.creatives_table import upsert_creatives
from pmg_tasks.warehouse import Warehouse
from tests.warehouse.pg_fixtures import postgres_server, postgres_url  # noqa: F401


def manifest_rows(users: int, campaign: str = "winter", variants: int = 2, z_shift: float = 0.0) -> pd.DataFrame:
    rows = []
    for u in range(users):
        for rank in range(1, variants + 1):
            creative = f"c{u % 3}{rank}"
            rows.append({
                "campaign_id": campaign, "user_id": f"u{u}", "item_id": "i1", "rank": rank, "creative_id": creative,
                "image_key": f"creatives/ds=2026-11-20/campaign={campaign}/{creative}.png",
                "image_uri": f"s3://b/p/creatives/{creative}.png", "segment_id": f"s{u % 3}",
                "personalization": "segment", "preference_tokens": ["<pref_text_0_1>"], "seed": 7, "d_p": 0.5,
                "d_t": 0.6, "consistency": 0.7, "z": -1.0 * rank + z_shift, "alpha": 0.5, "consistency_weight": 0.0,
                "headline": 'Say "hi", new\nline' if u == 0 else "", "prompt": "a poster, <pref_text_0_1>",
                "prompt_tokens": 9, "negative_prompt": "blurry", "preference_keywords": ["noir"],
                "target_keywords": ["winter"], "signature": f"sig{u % 3}", "diffusion_model": "sd-0123456789ab",
                "clip_model": "clip-0123456789ab", "llm_model": "template", "token_embeddings": "no-tokens",
                "safety": "passed",
            })  # fmt: skip
    return pd.DataFrame(rows)


def exercise(warehouse: Warehouse) -> None:
    import pyarrow as pa

    first = pa.concat_tables([contract.to_table(manifest_rows(5)), contract.to_table(manifest_rows(2, "retired"))])
    assert upsert_creatives(warehouse, "2026-11-20", first) == 14
    upsert_creatives(warehouse, "2026-11-19", contract.to_table(manifest_rows(1)))
    # The rerun: one campaign dropped, new scores, one variant fewer.
    again = contract.to_table(manifest_rows(5, variants=1, z_shift=0.25))
    upsert_creatives(warehouse, "2026-11-20", again)
    rows = warehouse.fetch_rows(
        "SELECT CAST(ds AS VARCHAR), campaign_id, user_id, rank, z, headline FROM generated_creatives "
        "ORDER BY ds, campaign_id, user_id, rank"
    )
    assert [r[:4] for r in rows if r[0] == "2026-11-20"] == [("2026-11-20", "winter", f"u{u}", 1) for u in range(5)]
    assert all(r[4] == -0.75 for r in rows if r[0] == "2026-11-20")
    assert len([r for r in rows if r[0] == "2026-11-19"]) == 2  # another date is left alone
    assert rows[-5][5] == 'Say "hi", new\nline' and rows[-4][5] == ""  # text is text, empty is not NULL
    by_user = warehouse.fetch_rows("SELECT count(*) FROM generated_creatives WHERE user_id = 'u0'")
    assert by_user == [(3,)]


def test_upsert_into_duckdb(tmp_path):
    with Warehouse(f"duckdb:///{tmp_path / 'w.duckdb'}") as warehouse:
        exercise(warehouse)


@pytest.mark.integration
def test_upsert_into_a_real_postgresql(postgres_url):  # noqa: F811
    with Warehouse(postgres_url) as warehouse:
        exercise(warehouse)
        indexes = warehouse.fetch_rows(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'generated_creatives' ORDER BY indexname"
        )
        assert ("generated_creatives_by_user",) in indexes
