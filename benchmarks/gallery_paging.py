"""Gallery paging: a campaign of 100,000 creatives against one of 10, the page a person asks for.

    .venv/bin/python -m benchmarks.gallery_paging          # prints a table, writes benchmarks/results/gallery_paging.json

In one process, for a manifest of 10 creatives (the baseline) and one of `--creatives` (two users each),
through the gallery's app (FastAPI's test client, no network): the first page of /browse (cold: the manifest
is read and grouped once), the same page again (warm: a slice of the cached frame), a page far down, and a
creative's own page. Each figure is the median of `--repeat` requests; ratios are large over baseline.
Not a test: nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "gallery_paging.json"
DS = "2026-11-20"


def write_campaign(settings, campaign_id: str, creatives: int) -> None:
    import numpy as np
    import pandas as pd

    from pmg_tasks.layout import creative_key, manifest_key, success_key
    from pmg_tasks.store import open_store, write_json, write_table

    store = open_store(settings)
    ids = np.char.add(np.char.zfill(np.arange(creatives).astype(str), 12), "abcd").astype(object)
    rows = pd.DataFrame({
        "campaign_id": campaign_id, "user_id": np.repeat([f"u{i:07d}" for i in range(creatives)], 2),
        "item_id": "m1", "rank": 1, "creative_id": np.repeat(ids, 2), "segment_id": "s1",
        "d_p": np.random.default_rng(0).random(2 * creatives), "d_t": 0.6, "consistency": 0.4,
        "z": np.random.default_rng(1).normal(size=2 * creatives), "headline": "A headline",
        "prompt": "a prompt", "negative_prompt": "blurry",
    })  # fmt: skip
    rows["image_key"] = [creative_key(DS, campaign_id, c) for c in rows["creative_id"]]
    rows["preference_tokens"] = [["<pref_txt_0_1>"]] * len(rows)
    rows["preference_keywords"] = [["noir", "rain"]] * len(rows)
    rows["target_keywords"] = [["coat"]] * len(rows)
    write_table(store, manifest_key(DS, campaign_id), rows)
    write_json(store, success_key(DS), {"rows": len(rows)})


def timed(client, path: str, params: dict, repeat: int) -> float:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = client.get(path, params=params)
        seconds.append(time.perf_counter() - started)
        assert answer.status_code == 200, answer.text[:200]
    return statistics.median(seconds)


def measure(settings, campaign_id: str, creatives: int, repeat: int) -> dict:
    from fastapi.testclient import TestClient

    from pmg_tasks.gallery import PAGE_SIZE, create_app

    write_campaign(settings, campaign_id, creatives)
    client = TestClient(create_app(settings, airflow_auth=False))
    browse = {"ds": DS, "campaign": campaign_id}
    started = time.perf_counter()
    client.get("/browse", params=browse)
    cold = time.perf_counter() - started
    last_page = max(1, -(-creatives // PAGE_SIZE))
    return {
        "creatives": creatives,
        "first_page_cold_s": round(cold, 4),
        "first_page_warm_s": round(timed(client, "/browse", browse, repeat), 4),
        "last_page_warm_s": round(timed(client, "/browse", {**browse, "page": last_page}, repeat), 4),
        "creative_page_s": round(timed(client, "/creative", {**browse, "creative_id": f"{creatives // 2:012d}abcd"},
                                       repeat), 4),  # fmt: skip
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creatives", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from pmg_tasks.settings import Settings

    with tempfile.TemporaryDirectory(prefix="pmg-gallery-bench-") as home:
        settings = Settings(home=Path(home))
        baseline = measure(settings, "small", 10, args.repeat)
        large = measure(settings, "large", args.creatives, args.repeat)
    ratios = {k: round(large[k] / baseline[k], 2) for k in baseline if k.endswith("_s") and baseline[k]}
    print(f"{'figure':<22} {'10 creatives':>14} {args.creatives:>10,} creatives {'ratio':>7}")
    for key, ratio in ratios.items():
        print(f"{key:<22} {baseline[key]:>13.4f}s {large[key]:>19.4f}s {ratio:>7.2f}")
    report = {
        "benchmark": "gallery_paging", "baseline": baseline, "large": large, "ratio_large_over_baseline": ratios,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg()},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
