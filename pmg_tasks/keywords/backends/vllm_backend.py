"""The vllm backend: offline `LLM.generate` over the whole batch on a GPU worker (the `gpu` extra, vLLM 0.32).

The JSON schema is declared per request with `StructuredOutputsParams(json=...)` (vLLM >= 0.12; the older
`guided_decoding` was removed), so the answers follow the shape instead of being parsed by hope; they still go
through parsing.py like any other backend's. Prefix caching is on: every prompt of a step starts with the same
instruction, which is computed once. vLLM is imported only here, inside the methods: CPU machines never need it.
Where vLLM starts worker processes, the caller needs an `if __name__ == "__main__":` guard (Airflow tasks and
benchmarks/keywords.py have one).
"""

from __future__ import annotations

from collections.abc import Sequence

from pmg_tasks.keywords.backends import Completion, Request, chat_text


class VLLMGenerator:
    def __init__(
        self, model: str, tensor_parallel_size: int = 1, max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.85, seed: int = 0, **engine_args,
    ):
        from vllm import LLM

        self.name = f"vllm:{model}"
        self.llm = LLM(
            model=model,
            enable_prefix_caching=True,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            **engine_args,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        prompts = [chat_text(self.tokenizer, r) for r in requests]
        params = [
            SamplingParams(
                temperature=0.0, max_tokens=r.max_tokens, structured_outputs=StructuredOutputsParams(json=r.schema)
            )
            for r in requests
        ]
        # One call for the whole batch: vLLM schedules it (continuous batching) and keeps the output order.
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            Completion(
                out.outputs[0].text if out.outputs else "",
                prompt_tokens=len(out.prompt_token_ids or []),
                completion_tokens=len(out.outputs[0].token_ids) if out.outputs else 0,
            )
            for out in outputs
        ]

    def close(self) -> None:
        self.llm = None
