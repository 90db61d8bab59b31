"""Keyword extraction speed: batching, incremental nights, and vLLM throughput where a GPU is at hand.

    .venv/bin/python -m benchmarks.keywords            # prints a table, writes benchmarks/results/keywords.json

1. batched vs one request at a time: the transformers backend on the test-size LM on CPU, the same prompts in
   the same run, after a warm-up of each.
2. incremental nights: the whole keyword stage (transformers backend, test-size LM) on a synthetic shop, then a
   second night on which 1% of the users have a new purchase: model calls of night 2 / night 1.
3. vllm: tokens per second of the vllm backend with a small real-size architecture and dummy weights
   (`load_format="dummy"`), only when CUDA and the GPU extra are present; otherwise the reason is recorded.

Not a test: nothing here asserts timings. The machine's load is recorded with the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "keywords.json"
DS = "2026-11-20"


def synthetic_shop(settings, ds: str, users: int, items: int, changed_users: list[str] | None = None):
    """A seeded shop's catalog and events in the store, histories built; `changed_users` get a new purchase."""
    import numpy as np
    import pandas as pd

    from pmg_tasks.demo.seed import make_catalog, make_events
    from pmg_tasks.histories import build_histories
    from pmg_tasks.layout import run_key
    from pmg_tasks.store import open_store, read_frame, write_table

    rng = np.random.default_rng(0)
    catalog = make_catalog(items, rng)
    events, _ = make_events(catalog, users, dt.date.fromisoformat(ds), 3, rng, bad_fraction=0.0)
    if changed_users:
        new = pd.concat([events.iloc[[0]]] * len(changed_users), ignore_index=True).assign(
            user_id=changed_users, item_id=catalog["item_id"].iloc[-1], event_type="purchase",
            dwell_seconds=10_000.0, event_id=[f"e-new-{i}" for i in range(len(changed_users))],
        )
        events = pd.concat([events, new], ignore_index=True)
    store = open_store(settings)
    write_table(store, run_key(ds, "items.parquet"), catalog)
    write_table(store, run_key(ds, "events_valid.parquet"), events)
    build_histories(settings, ds)
    return read_frame(store, run_key(ds, "histories.parquet"))


def bench_batching(llm: str, settings, prompts: int, batch_size: int, max_new_tokens: int, repeats: int) -> dict:
    from pmg_tasks.keywords.backends.transformers_backend import TransformersGenerator
    from pmg_tasks.keywords.prompts import attributes_request
    from pmg_tasks.keywords.scenario import load_scenario

    histories = synthetic_shop(settings, DS, users=max(prompts * 2, 50), items=60)
    scenario = load_scenario("movie_posters")
    texts = (list(histories["history_text"]) * (prompts // len(histories) + 1))[:prompts]
    requests = [attributes_request(scenario, text, max_new_tokens) for text in texts]
    generator = TransformersGenerator(llm, batch_size=batch_size)

    def one_at_a_time():
        return [generator.generate([r])[0] for r in requests]

    def batched():
        return generator.generate(requests)

    generator.generate(requests[:batch_size])  # warm-up: first-call allocations, thread pools
    generator.generate(requests[:1])
    single_s, batch_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        alone = one_at_a_time()
        single_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        together = batched()
        batch_s.append(time.perf_counter() - start)
    tokens = sum(c.completion_tokens for c in together)
    same = sum(a.text == b.text for a, b in zip(alone, together, strict=True))
    single, batch = statistics.median(single_s), statistics.median(batch_s)
    return {
        "prompts": prompts, "batch_size": batch_size, "max_new_tokens": max_new_tokens, "repeats": repeats,
        "prompt_tokens_mean": round(statistics.mean(c.prompt_tokens for c in together), 1),
        "one_at_a_time_s": round(single, 3), "batched_s": round(batch, 3), "speedup": round(single / batch, 2),
        "tokens_per_s_one_at_a_time": round(tokens / single, 1), "tokens_per_s_batched": round(tokens / batch, 1),
        "identical_answers": f"{same}/{prompts}",
    }


def bench_incremental(llm: str, settings, users: int, changed_fraction: float, max_new_tokens: int,
                      batch_size: int) -> dict:
    import yaml

    from pmg_tasks.keywords.backends.transformers_backend import TransformersGenerator
    from pmg_tasks.keywords.stage import extract_keywords
    from pmg_tasks.layout import run_key
    from pmg_tasks.store import open_store, read_json

    settings = settings.model_copy(update={
        "keyword_backend": "transformers",
        "models": settings.models.model_copy(update={"llm": llm}),
        "keywords": settings.keywords.model_copy(
            update={"max_new_tokens": max_new_tokens, "batch_size": batch_size, "users_per_shard": 500}),
    })
    settings.home.mkdir(parents=True, exist_ok=True)
    Path(settings.campaigns_file).write_text(yaml.safe_dump({"campaigns": [{
        "campaign_id": "bench", "start_date": "2026-01-01", "end_date": "2026-12-31",
        "target_items": [f"m{i:05d}" for i in range(5)]}]}))
    generator = TransformersGenerator(llm, batch_size=batch_size)
    night2 = (dt.date.fromisoformat(DS) + dt.timedelta(days=1)).isoformat()
    store = open_store(settings)

    first = synthetic_shop(settings, DS, users=users, items=200)
    start = time.perf_counter()
    extract_keywords(settings, DS, generator=generator)
    first_s = time.perf_counter() - start
    one = read_json(store, run_key(DS, "stats/keywords.json"))

    changed = list(first["user_id"].sample(frac=changed_fraction, random_state=0))
    synthetic_shop(settings, night2, users=users, items=200, changed_users=changed)
    start = time.perf_counter()
    extract_keywords(settings, night2, generator=generator)
    second_s = time.perf_counter() - start
    two = read_json(store, run_key(night2, "stats/keywords.json"))
    return {
        "users": len(first), "changed_users": len(changed), "shards": one["shards"],
        "night1": {k: one[k] for k in ("model_calls", "cache_hits", "cache_misses", "fallbacks")}
        | {"seconds": round(first_s, 2)},
        "night2": {k: two[k] for k in ("model_calls", "cache_hits", "cache_misses", "fallbacks")}
        | {"seconds": round(second_s, 2)},
        "night2_calls_fraction": round(two["model_calls"] / one["model_calls"], 4),
    }


def bench_vllm(prompts: int, max_new_tokens: int) -> dict:
    """Tokens per second of the vllm backend, dummy weights on a ~0.5B Llama-shaped model."""
    try:
        import torch

        if not torch.cuda.is_available():
            return {"skipped": "no CUDA device on this machine (no GPU was lent to this run)"}
        import vllm  # noqa: F401
    except ImportError as error:
        return {"skipped": f"the GPU extra is not installed ({error.name} missing)"}
    from transformers import LlamaConfig

    from pmg_tasks.keywords.backends.vllm_backend import VLLMGenerator
    from pmg_tasks.keywords.prompts import attributes_request
    from pmg_tasks.keywords.scenario import load_scenario
    from pmg_tasks.models.test_size import causal_lm_tokenizer

    with tempfile.TemporaryDirectory(prefix="pmg-vllm-") as folder:
        tokenizer = causal_lm_tokenizer()
        tokenizer.model_max_length = 4096
        tokenizer.save_pretrained(folder)
        # Qwen2.5-0.5B-like shapes: real compute per token, random ("dummy") weights, nothing downloaded.
        LlamaConfig(vocab_size=32_000, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    torch_dtype="bfloat16").save_pretrained(folder)
        generator = VLLMGenerator(folder, max_model_len=2048, load_format="dummy")
        scenario = load_scenario("movie_posters")
        history = "1. The Silent Harbor (Drama, Romance): melancholic, noir, 1990s, france"
        requests = [attributes_request(scenario, f"{history}\n2. Film {i} (Action): tense", max_new_tokens)
                    for i in range(prompts)]
        generator.generate(requests[:8])
        start = time.perf_counter()
        answers = generator.generate(requests)
        seconds = time.perf_counter() - start
    tokens = sum(a.completion_tokens for a in answers)
    return {"prompts": prompts, "max_new_tokens": max_new_tokens, "seconds": round(seconds, 2),
            "completion_tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "device": torch.cuda.get_device_name(0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    from pmg_tasks.models.test_size import build_causal_lm
    from pmg_tasks.settings import Settings

    with tempfile.TemporaryDirectory(prefix="pmg-bench-") as folder:
        llm = str(build_causal_lm(Path(folder) / "llm"))
        batching = bench_batching(llm, Settings(home=Path(folder) / "a"), args.prompts, args.batch_size,
                                  args.max_new_tokens, args.repeats)
        incremental = bench_incremental(llm, Settings(home=Path(folder) / "b"), args.users, args.changed,
                                        max_new_tokens=16, batch_size=64)
    gpu = bench_vllm(prompts=512, max_new_tokens=64)

    results = {
        "command": "python -m benchmarks.keywords",
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "load_average": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__},
        "batched_vs_one_at_a_time": batching,
        "incremental_nights": incremental,
        "vllm": gpu,
    }
    print(f"{'measure':<48}{'value':>14}")
    rows = [
        (f"one at a time, {batching['prompts']} prompts (s)", batching["one_at_a_time_s"]),
        (f"batched by {batching['batch_size']} (s)", batching["batched_s"]),
        ("speedup (x)", batching["speedup"]),
        ("tokens/s one at a time", batching["tokens_per_s_one_at_a_time"]),
        ("tokens/s batched", batching["tokens_per_s_batched"]),
        ("identical answers", batching["identical_answers"]),
        (f"night 1 model calls ({incremental['users']} users)", incremental["night1"]["model_calls"]),
        (f"night 2 model calls ({incremental['changed_users']} changed)", incremental["night2"]["model_calls"]),
        ("night 2 / night 1 model calls", incremental["night2_calls_fraction"]),
        ("night 1 / night 2 stage seconds", f"{incremental['night1']['seconds']} / {incremental['night2']['seconds']}"),
        ("vllm tokens/s", gpu.get("tokens_per_s", gpu.get("skipped"))),
    ]
    for name, value in rows:
        print(f"{name:<48}{value!s:>14}" if len(str(value)) <= 14 else f"{name:<48}{value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
