"""`load_generator`: one entry point from a model name to a `Generator` on the chosen backend."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from posttrain.errors import UsageError
from posttrain.generation.types import Generator
from posttrain.generation.vllm_engine import adapter_rank

BACKENDS = ("auto", "vllm", "transformers", "openai")


def default_backend() -> str:
    """What `auto` means everywhere (generation, judges, MMLU scoring): vLLM when it is installed, else
    transformers. On CPU with a tiny model transformers is faster; pass it explicitly there."""
    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"


def resolve_backend(backend: str, choices: tuple[str, ...] = BACKENDS) -> str:
    """The backend `backend` names (`auto`: `default_backend()`); UsageError unless it is one of `choices`."""
    if backend not in choices:
        raise UsageError(f"unknown generation backend {backend!r}; choose one of {', '.join(choices)}")
    return default_backend() if backend == "auto" else backend


def load_generator(model: str, backend: str = "auto", **options) -> Generator:
    """`backend="auto"` picks vLLM when it is installed, else transformers.

    Options per backend: transformers: batch_size, show_progress, adapter (a PEFT folder), dtype, revision,
    trust_remote_code; vllm: see `VLLMGenerator`; openai: base_url (required), api_key_env, max_concurrency, ...
    (`model` is then the served model name).
    """
    backend = resolve_backend(backend)
    if backend == "openai":
        from posttrain.generation.openai_api import OpenAICompatibleGenerator

        if "base_url" not in options:
            raise UsageError("the openai backend needs base_url, e.g. base_url='http://localhost:8000/v1'")
        return OpenAICompatibleGenerator(model=model, **options)
    if backend == "vllm":
        from posttrain.generation.vllm_engine import VLLMGenerator

        return VLLMGenerator(model, **options)
    return _transformers_generator(model, **options)


def _transformers_generator(model: str, adapter: str | None = None, batch_size: int = 256,
                            show_progress: bool = False, **load_options) -> Generator:
    from posttrain.generation.hf import TransformersGenerator
    from posttrain.models import load_causal_lm, load_tokenizer

    if adapter:
        adapter_rank(adapter)  # a clear error before the model loads
    load_keys = ("revision", "trust_remote_code")
    tokenizer = load_tokenizer(model, **{k: v for k, v in load_options.items() if k in load_keys})
    causal_lm = load_causal_lm(model, **load_options)
    model_id = f"transformers:{model}"
    if adapter:
        from peft import PeftModel

        causal_lm = PeftModel.from_pretrained(causal_lm, adapter)
        model_id += f"+lora:{Path(adapter).resolve()}"
    return TransformersGenerator(causal_lm, tokenizer, batch_size=batch_size, show_progress=show_progress,
                                 model_id=model_id)
