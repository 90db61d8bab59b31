"""Stage 4, keywords: user preference keywords and target-item keywords (PMG section 3.2).

    scenario.py    what to extract, per kind of creative (scenarios/*.yaml)
    prompts.py     PMG's prompts: attributes, integrate, target; item text delimited as data
    backends/      text generators behind one interface: transformers, openai, vllm
    parsing.py     untrusted answers -> keywords: parse, repair, normalise
    extraction.py  the two-step extraction over any generator, one batch per step
    cache.py       extractions in the object store, keyed by content, scenario, prompt and model
    catalog.py     keywords from item metadata: the `catalog` backend and every LLM's fallback
    stage.py       plan shards, extract a shard, merge (the DAG's keyword tasks)

See docs/keywords.md.
"""
