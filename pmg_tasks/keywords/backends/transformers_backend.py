"""The transformers backend: batched greedy `generate` with left padding, on a GPU when there is one.

No constrained decoding here: the schema shapes the prompt, and parsing.py deals with what comes back.
Prompts are sorted by length before batching so a batch pads little.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pmg_tasks.keywords.backends import Completion, Request, chat_text

log = logging.getLogger(__name__)


class TransformersGenerator:
    def __init__(self, model: str, batch_size: int = 16, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = f"transformers:{model}"
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        # A decoder continues from the prompt's last token: padding must come before it.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device).eval()
        positions = getattr(self.model.config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        self.max_length = int(min(positions, self.tokenizer.model_max_length))

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        texts = [chat_text(self.tokenizer, r) for r in requests]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        completions: list[Completion | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            max_new = max(requests[i].max_tokens for i in batch)
            for i, completion in zip(batch, self._generate([texts[i] for i in batch], max_new), strict=True):
                completions[i] = completion
        return completions  # type: ignore[return-value]

    def _generate(self, texts: list[str], max_new_tokens: int) -> list[Completion]:
        import torch

        # Keep the end of an over-long prompt: the data block and the answer cue are there.
        self.tokenizer.truncation_side = "left"
        encoded = self.tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True,
            max_length=max(8, self.max_length - max_new_tokens),
        ).to(self.device)
        with torch.inference_mode():
            output = self.model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        prompt_length = encoded["input_ids"].shape[1]
        new_tokens = output[:, prompt_length:]
        answers = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        prompt_tokens = encoded["attention_mask"].sum(dim=1).tolist()
        generated = (new_tokens != self.tokenizer.pad_token_id).sum(dim=1).tolist()
        return [
            Completion(answer, prompt_tokens=int(p), completion_tokens=int(g))
            for answer, p, g in zip(answers, prompt_tokens, generated, strict=True)
        ]

    def close(self) -> None:
        self.model = None
