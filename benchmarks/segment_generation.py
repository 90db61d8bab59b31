"""Generation per segment against generation per user, and the per-user choice at a million users.

    .venv/bin/python -m benchmarks.segment_generation      # prints a table, writes benchmarks/results/segment_generation.json

1. A synthetic shop of 10,000 users and 3 campaigns runs the real stages (extract .. preference tokens, token
   embeddings) once; then plan, headlines and every generate shard run twice on copies of that store, with
   `personalization: segment` and with `personalization: user`, test-size models, in the same process. The
   figure is diffusion calls (pipeline forward passes, counted at `PersonalizedCreatives.draw`) per requested
   creative in each mode, and their ratio. (The image-safety classifier is off in both: it costs CPU per kept
   image, not diffusion calls.)
2. The choice step alone, in a child process (so its peak memory is its own): 1,000,000 users in 256
   segments, k = 4 candidates each, 768-dim unit embeddings (a ViT-L CLIP's width): d_p by one matrix
   product per segment and the row-wise choice, against the naive way (a Python loop over users, each
   scoring and sorting their k candidates) on the first segments, in the same process.

Not a test: nothing here asserts timings. The machine's load is recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "segment_generation.json"
DS = "2026-11-20"


def campaigns_yaml(shop, personalization: str) -> str:
    popular = [i for i in shop.events["item_id"].value_counts().index if i in set(shop.items["item_id"])]
    common = f"start_date: 2026-11-01\n    end_date: 2026-11-30\n    personalization: {personalization}"
    return f"""\
campaigns:
  - campaign_id: everyone
    {common}
    target_items: [{popular[0]}, {popular[1]}]
  - campaign_id: scifi-fans
    {common}
    target_items: [{popular[2]}]
    audience: {{categories: [Sci-Fi, Action]}}
    variants: 2
    candidates: 3
  - campaign_id: drama-top
    {common}
    target_items: [{popular[3]}]
    audience: {{categories: [Drama], max_users: 3000}}
"""


def bench_modes(users: int, items: int, workdir: Path) -> dict:
    """Both personalization modes over one shop, from the same front half."""
    import dataclasses
    import datetime as dt

    from pmg_tasks.demo.seed import make_shop, seed_warehouse, write_item_images
    from pmg_tasks.extract import extract_clickstream
    from pmg_tasks.histories import build_histories
    from pmg_tasks.keywords.stage import extract_keywords
    from pmg_tasks.models import build_test_size_models
    from pmg_tasks.preferences.stage import update_preference_tokens
    from pmg_tasks.settings import Generation, Settings
    from pmg_tasks.store import open_store
    from pmg_tasks.tokens.stage import train_token_embeddings
    from pmg_tasks.validation.stage import validate_events
    from pmg_tasks.warehouse import connect

    models = build_test_size_models(workdir / "models")
    generation = Generation(image_size=32, inference_steps=1, guidance_scale=1.0, batch_size=32,
                            candidates_per_request=2, requests_per_shard=2048)  # fmt: skip
    # The figure is diffusion calls; the image classifier (about 0.1 s of CPU a kept image here) would only
    # stretch the per-user run by hours on a 2-core machine, so both modes run without it.
    base = Settings(home=workdir / "front", models=models, generation=generation, safety={"enabled": False})
    shop = make_shop(users, items, dt.date.fromisoformat(DS), 7, seed=0)
    shop = dataclasses.replace(shop, items=write_item_images(open_store(base), shop.items))
    with connect(base) as warehouse:
        seed_warehouse(warehouse, shop)
    Path(base.campaigns_file).write_text(campaigns_yaml(shop, "segment"))
    front = {}
    for name, stage in (("extract", extract_clickstream), ("validate", validate_events),
                        ("histories", build_histories), ("keywords", extract_keywords),
                        ("preference_tokens", update_preference_tokens), ("token_embeddings", train_token_embeddings)):
        started = time.perf_counter()
        result = stage(base, DS)
        front[name] = round(time.perf_counter() - started, 2)
        if name == "preference_tokens":
            front["segments"] = result["segments"]
    modes = {}
    for mode in ("segment", "user"):
        home = workdir / mode
        shutil.copytree(base.home, home)
        settings = base.model_copy(update={"home": home, "store_root": str(home / "store"),
                                           "warehouse_url": base.warehouse_url,
                                           "campaigns_file": str(home / "campaigns.yaml")})  # fmt: skip
        Path(settings.campaigns_file).write_text(campaigns_yaml(shop, mode))
        modes[mode] = run_back_half(settings)
        print(f"  {mode}: {json.dumps(modes[mode])}", flush=True)
    ratio = modes["user"]["diffusion_calls"] / max(modes["segment"]["diffusion_calls"], 1)
    return {"users": users, "items": items, "front_half_s": front, "modes": modes,
            "user_calls_over_segment_calls": round(ratio, 2)}  # fmt: skip


def run_back_half(settings) -> dict:
    """plan, headlines and every generate shard, counting the diffusion pipeline's forward passes."""
    from pmg_tasks.generate.creatives import PersonalizedCreatives
    from pmg_tasks.generate.shard import generate_shard
    from pmg_tasks.headlines import write_headlines
    from pmg_tasks.layout import run_key
    from pmg_tasks.plan import plan_generation
    from pmg_tasks.store import open_store, read_json

    calls = {"draw": 0, "images": 0}
    original = PersonalizedCreatives.draw

    def counted(self, prompts, seeds, cache=None):
        calls["draw"] += 1
        calls["images"] += len(seeds)
        return original(self, prompts, seeds, cache)

    started = time.perf_counter()
    shards = plan_generation(settings, DS)
    plan_s = time.perf_counter() - started
    write_headlines(settings, DS)
    PersonalizedCreatives.draw = counted
    try:
        started = time.perf_counter()
        for index in shards:
            generate_shard(settings, DS, index)
        generate_s = time.perf_counter() - started
    finally:
        PersonalizedCreatives.draw = original
    plan = read_json(open_store(settings), run_key(DS, "stats/plan.json"))
    return {
        "requested_creatives": plan["requested_creatives"],
        "users": plan["users"],
        "generations": plan["generations"],
        "segments": plan["segments"],
        "candidate_images": calls["images"],
        "diffusion_calls": calls["draw"],
        "diffusion_calls_per_requested_creative": round(calls["draw"] / plan["requested_creatives"], 5),
        "images_per_requested_creative": round(calls["images"] / plan["requested_creatives"], 4),
        "plan_s": round(plan_s, 2),
        "generate_s": round(generate_s, 2),
        "shards": len(shards),
    }


def bench_choice(users: int, segments: int, k: int, dim: int, naive_segments: int) -> dict:
    """The vectorised choice over every segment, and the naive per-user loop over the first few."""
    import numpy as np

    from pmg_tasks.generate.choice import choose_per_user, preference_similarities

    rng = np.random.default_rng(0)
    sizes = np.full(segments, users // segments)
    sizes[: users % segments] += 1

    def unit(rows: int) -> np.ndarray:
        vectors = rng.standard_normal((rows, dim), dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    alpha, variants = 0.6, 1
    # Inputs are built before the clock starts: what is timed is d_p and the choice.
    inputs = [(unit(int(n)), unit(k), rng.uniform(0.3, 0.9, k)) for n in sizes]
    started = time.perf_counter()
    chosen = []
    for user_rows, candidate_rows, d_t in inputs:
        chosen.append(choose_per_user(preference_similarities(user_rows, candidate_rows), d_t, alpha, variants))
    vectorised_s = time.perf_counter() - started

    naive_users = int(sizes[:naive_segments].sum())
    started = time.perf_counter()
    naive = []
    for user_rows, candidate_rows, d_t in inputs[:naive_segments]:
        for row in user_rows:
            scores = []
            for c in range(k):
                d_p = max((1.0 + float(row @ candidate_rows[c])) / 2.0, 1e-6)
                scores.append((-(alpha * np.log(d_p) + (1 - alpha) * np.log(d_t[c])), c))
            naive.append([c for _, c in sorted(scores)[:variants]])
    naive_s = time.perf_counter() - started
    same = naive == [row.tolist() for choice in chosen[:naive_segments] for row in choice.candidates]
    per_user_vectorised = vectorised_s / users
    per_user_naive = naive_s / naive_users
    return {
        "users": users, "segments": segments, "k": k, "dim": dim, "variants": variants,
        "vectorised_s": round(vectorised_s, 3),
        "naive_users": naive_users, "naive_s": round(naive_s, 3),
        "naive_extrapolated_s": round(per_user_naive * users, 1),
        "speedup_per_user": round(per_user_naive / per_user_vectorised, 1),
        "same_choices_on_naive_users": bool(same),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--choice-users", type=int, default=1_000_000)
    parser.add_argument("--part", choices=["all", "choice"], default="all")
    args = parser.parse_args(argv)
    if args.part == "choice":
        result = bench_choice(args.choice_users, 256, 4, 768, naive_segments=4)
        print(json.dumps(result))
        return result

    import torch

    torch.set_num_threads(1)
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.segment_generation", "--part", "choice",
         "--choice-users", str(args.choice_users)],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    choice = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"choice: {json.dumps(choice)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="pmg-bench-") as tmp:
        modes = bench_modes(args.users, args.items, Path(tmp))
    result = {
        "command": "python -m benchmarks.segment_generation",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "load_average": [round(x, 2) for x in os.getloadavg()]},
        "segment_vs_user": modes,
        "choice_step": choice,
    }  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    segment, user = modes["modes"]["segment"], modes["modes"]["user"]
    print(f"\n{'':22}{'segment':>12}{'user':>12}")
    for name in ("requested_creatives", "generations", "candidate_images", "diffusion_calls",
                 "diffusion_calls_per_requested_creative", "generate_s"):
        print(f"{name:22}{segment[name]:>12}{user[name]:>12}")
    print(f"user calls / segment calls: {modes['user_calls_over_segment_calls']}x")
    print(f"choice for {choice['users']:,} users x {choice['segments']} segments x k={choice['k']}: "
          f"{choice['vectorised_s']} s, peak {choice['peak_rss_mb']} MB; naive loop {choice['speedup_per_user']}x "
          f"slower per user (same choices: {choice['same_choices_on_naive_users']})")
    print(f"wrote {RESULTS}")
    return result


if __name__ == "__main__":
    main()
