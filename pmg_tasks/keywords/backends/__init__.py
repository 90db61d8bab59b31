"""LLM backends: batch of prompts in, batch of completions out, behind one small interface.

    transformers  batched `generate` with left padding, CPU or GPU (the test-size LM runs here)
    openai        an OpenAI-compatible HTTP endpoint (a vLLM server), bounded concurrency, retries, timeouts
    vllm          offline `LLM.generate` over the whole batch on a GPU worker, prefix caching on

Each backend only turns `Request`s into text. What a request says (prompts.py) and what an answer means
(parsing.py) are shared, so the vllm backend, which cannot run on a CPU, is as thin as possible and its
requests and answers are tested through the other two. The `catalog` keyword backend has no model and no
generator: keywords come from item metadata (keywords/catalog.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pmg_tasks.settings import Settings


@dataclass(frozen=True)
class Request:
    """One chat prompt and the JSON schema its answer must follow."""

    system: str
    user: str
    schema: dict = field(hash=False)
    schema_name: str
    max_tokens: int


@dataclass
class Completion:
    """A model's answer; `text` is None when no answer came (the error says why)."""

    text: str | None
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


class TextGenerator(Protocol):
    name: str  # backend:model, for logs and the keywords table

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        """One completion per request, in order; a failed request yields Completion(None, error)."""
        ...

    def close(self) -> None: ...


def model_of(settings: Settings) -> str:
    return settings.keywords.model or settings.models.llm


def model_id_of(settings: Settings) -> str:
    """The model's name in cache keys: explicit, else the model path or id."""
    return settings.keywords.model_id or model_of(settings)


def open_generator(settings: Settings) -> TextGenerator:
    """The generator `settings.keyword_backend` names (not for `catalog`, which needs none)."""
    backend, model, options = settings.keyword_backend, model_of(settings), settings.keywords
    if backend == "openai":
        from pmg_tasks.keywords.backends.openai_backend import OpenAIGenerator

        if not options.endpoint_url:
            raise ValueError("the openai keyword backend needs PMG_KEYWORDS__ENDPOINT_URL (e.g. http://vllm:8000/v1)")
        return OpenAIGenerator(
            options.endpoint_url, model, api_key=options.api_key(), concurrency=options.concurrency,
            timeout_s=options.timeout_s, retries=options.retries, backoff_s=options.backoff_s,
        )
    if not model:
        raise ValueError(f"the {backend} keyword backend needs a model: set PMG_KEYWORDS__MODEL or PMG_MODELS__LLM")
    if backend == "transformers":
        from pmg_tasks.keywords.backends.transformers_backend import TransformersGenerator

        return TransformersGenerator(model, batch_size=options.batch_size)
    if backend == "vllm":
        from pmg_tasks.keywords.backends.vllm_backend import VLLMGenerator

        return VLLMGenerator(
            model, tensor_parallel_size=options.tensor_parallel_size, max_model_len=options.max_model_len,
            gpu_memory_utilization=options.gpu_memory_utilization, seed=settings.seed,
        )
    raise ValueError(f"keyword backend {backend!r} has no text generator")


def chat_text(tokenizer, request: Request) -> str:
    """The prompt as the model's chat template writes it; a plain template for models without one."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": request.system}, {"role": "user", "content": request.user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"### System\n{request.system}\n\n### User\n{request.user}\n\n### Assistant\n"
