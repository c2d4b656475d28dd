"""The OpenAI-compatible backend: any server speaking /v1/chat/completions and /v1/completions (`vllm serve`,
hosted APIs). Chat prompts go to chat completions (the server applies its chat template), strings to completions.

The API key is read from the environment variable named by `api_key_env` and handed to the client only; it is never
stored on the generator, printed or written to a cache.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, as_completed

from posttrain.errors import UsageError
from posttrain.generation.decoding import cut_at_stop
from posttrain.generation.hf import OnResult
from posttrain.generation.types import Completion, SamplingParams


class OpenAICompatibleGenerator:
    """`OpenAICompatibleGenerator("http://localhost:8000/v1", "served-model-name")`.

    `return_token_ids` asks a vLLM server for the generated token ids (other servers give none: `token_ids` is then
    empty). top_k > 0 is sent as vLLM's `top_k` extra field. `extra_body` is merged into every request.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", max_concurrency: int = 8,
                 timeout: float = 600.0, max_retries: int = 2, return_token_ids: bool = False,
                 extra_body: dict | None = None, show_progress: bool = True):
        from openai import OpenAI

        # Local servers need no key, but the client insists on one.
        self.client = OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "EMPTY", timeout=timeout,
                             max_retries=max_retries)
        self.base_url, self.model = base_url, model
        self.max_concurrency, self.show_progress = max_concurrency, show_progress
        self.extra_body = {**(extra_body or {}), **({"return_token_ids": True} if return_token_ids else {})}

    def __repr__(self) -> str:
        return f"OpenAICompatibleGenerator(base_url={self.base_url!r}, model={self.model!r})"

    @property
    def model_id(self) -> str:
        return f"openai:{self.base_url}:{self.model}"

    def generate(self, prompts, params: SamplingParams, on_result: OnResult | None = None) -> list[list[Completion]]:
        """For each prompt, `params.n` completions, `max_concurrency` requests in flight."""
        from tqdm.auto import tqdm

        results: list[list[Completion]] = [[] for _ in prompts]
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool, \
                tqdm(total=len(prompts), desc="generate (api)", disable=not self.show_progress) as progress:
            futures = {pool.submit(self._request, index, prompt, params): index
                       for index, prompt in enumerate(prompts)}
            for future in as_completed(futures):
                index = futures[future]
                results[index] = future.result()
                if on_result is not None:
                    on_result(index, results[index])
                progress.update(1)
        return results

    def _request(self, index: int, prompt, params: SamplingParams) -> list[Completion]:
        import openai

        extra_body = {**self.extra_body, **({"top_k": params.top_k} if params.top_k else {})}
        common = {"model": self.model, "n": params.n, "temperature": params.temperature, "top_p": params.top_p,
                  "seed": params.seed, "extra_body": extra_body, **({"stop": list(params.stop)} if params.stop else {})}
        try:
            if isinstance(prompt, str):
                logprobs = {} if params.logprobs is None else {"logprobs": params.logprobs}
                response = self.client.completions.create(prompt=prompt, max_tokens=params.max_new_tokens,
                                                          **logprobs, **common)
            else:
                logprobs = {} if params.logprobs is None else {"logprobs": True, "top_logprobs": params.logprobs}
                response = self.client.chat.completions.create(messages=prompt,
                                                               max_completion_tokens=params.max_new_tokens,
                                                               **logprobs, **common)
        except openai.APIConnectionError as err:
            raise UsageError(f"cannot reach {self.base_url}: {err}; is the server running?") from None
        except openai.NotFoundError as err:
            raise UsageError(f"{self.base_url} does not serve {self.model!r} or this endpoint: {err}") from None
        return [_completion(index, choice, params) for choice in sorted(response.choices, key=lambda c: c.index)]


def _completion(index: int, choice, params: SamplingParams) -> Completion:
    """One response choice (chat or text) -> Completion; the stop cut is re-applied in case a server keeps it."""
    raw = choice.message.content if hasattr(choice, "message") else choice.text
    text, stopped = cut_at_stop(raw or "", params.stop)
    completion = Completion(index, text, list(getattr(choice, "token_ids", None) or []),
                            finish_reason="length" if choice.finish_reason == "length" and not stopped else "stop")
    if params.logprobs is not None and choice.logprobs is not None:
        completion.logprobs, completion.top_logprobs = _logprobs(choice.logprobs)
    return completion


def _logprobs(logprobs) -> tuple[list[float], list[dict[str, float]]]:
    """Chat (`content` entries with `top_logprobs`) and completions (parallel lists) layouts -> per-token
    log-probs and token -> log-prob maps that include the sampled token."""
    if hasattr(logprobs, "content"):
        steps = [(entry.token, entry.logprob, {top.token: top.logprob for top in entry.top_logprobs})
                 for entry in logprobs.content or []]
    else:
        steps = list(zip(logprobs.tokens or [], logprobs.token_logprobs or [],
                         logprobs.top_logprobs or [{}] * len(logprobs.tokens or [])))
    tops = []
    for token, logprob, top in steps:
        merged = dict(top or {})
        # Two ids can decode to one string; keep the higher log-prob, as the other backends do.
        merged[token] = max(logprob, merged.get(token, logprob))
        tops.append(merged)
    return [logprob for _, logprob, _ in steps], tops
