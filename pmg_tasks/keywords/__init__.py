"""Stage 4, keywords: user preference keywords and target-item keywords (PMG section 3.2).

A backend turns histories into keywords; `catalog` needs no model (keywords from item metadata,
weighted across the history) and is both the laptop default and the fallback of the LLM backends.
"""
