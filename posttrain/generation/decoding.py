"""Backend-independent post-processing: generated token ids (+ per-step log-probs) -> `Completion`.

The transformers and vLLM backends both finish through `finish_completion` with the same HF tokenizer, so the
same token ids always give the same text, stop handling, finish reason and top-logprob keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from posttrain.generation.types import Completion, SamplingParams, is_token_ids

# One generated step: (log-prob of the chosen token, [(token id, log-prob), ...] best first).
StepLogprobs = tuple[float, list[tuple[int, float]]]


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to (not including) the earliest stop string, and whether one was found."""
    positions = [pos for s in stop if s and (pos := text.find(s)) >= 0]
    return (text[:min(positions)], True) if positions else (text, False)


def trim_at(token_ids: Sequence[int], enders: Iterable[int]) -> tuple[list[int], bool]:
    """Token ids before the first id in `enders` (EOS, and for padded batches the pad id), and whether one was met."""
    enders = set(enders)
    for position, token in enumerate(token_ids):
        if token in enders:
            return list(token_ids[:position]), True
    return list(token_ids), False


def tokens_through_stop(token_ids: list[int], decode: Callable[[list[int]], str], stop: Sequence[str]) -> int:
    """Length of the shortest prefix of `token_ids` whose text contains a stop string (a decoder stops after the
    token that completes it). Binary search: containment only grows as tokens are appended."""
    low, high = 1, len(token_ids)
    while low < high:
        middle = (low + high) // 2
        if cut_at_stop(decode(token_ids[:middle]), stop)[1]:
            high = middle
        else:
            low = middle + 1
    return high


def top_logprob_map(step: StepLogprobs, chosen: int, token_text: Callable[[int], str]) -> dict[str, float]:
    """decoded token -> log-prob for the step's alternatives plus the chosen token. Distinct ids that decode to the
    same string keep the higher log-prob."""
    chosen_logprob, alternatives = step
    result: dict[str, float] = {}
    for token, logprob in [*alternatives, (chosen, chosen_logprob)]:
        key = token_text(token)
        if key not in result or logprob > result[key]:
            result[key] = logprob
    return result


def finish_completion(prompt_index: int, token_ids: Sequence[int], tokenizer, params: SamplingParams,
                      enders: Iterable[int], steps: Sequence[StepLogprobs] | None = None,
                      token_text: Callable[[int], str] | None = None) -> Completion:
    """Trim at EOS, decode, cut at the first stop string; token ids and log-probs are cut to the tokens generated
    up to and including the one that completed the stop string."""
    ids, ended = trim_at(token_ids, enders)

    def decode(part: list[int]) -> str:
        return tokenizer.decode(part, skip_special_tokens=True)

    text, stopped = cut_at_stop(decode(ids), params.stop)
    if stopped:
        ids = ids[:tokens_through_stop(ids, decode, params.stop)]
    completion = Completion(prompt_index, text, ids, finish_reason="stop" if ended or stopped else "length")
    if params.logprobs is not None and steps is not None:
        token_text = token_text or (lambda token: tokenizer.decode([token]))
        kept = steps[:len(ids)]
        completion.logprobs = [chosen_logprob for chosen_logprob, _ in kept]
        completion.top_logprobs = [top_logprob_map(step, token, token_text) for step, token in zip(kept, ids)]
    return completion


def eos_ids(tokenizer, model_config=None) -> set[int]:
    """Every id that ends generation: the tokenizer's EOS and the generation config's (an int or a list)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(model_config, "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, list | tuple) else [configured])
    return ids


def request_seed(seed: int, prompt_index: int) -> int:
    """A well-spread per-prompt seed, so prompts in one call do not share a random stream (vLLM derives the n
    samples of one request as seed + 0..n-1, so plain seed + index would overlap)."""
    digest = hashlib.sha256(f"{seed}:{prompt_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 2  # < 2**30, leaves room for + n


def encode_prompt(tokenizer, prompt) -> list[int]:
    """Chat messages go through the chat template with the generation prompt; raw strings are tokenized as is;
    token ids pass through unchanged."""
    if is_token_ids(prompt):
        return list(prompt)
    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    encoded = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


class TokenTexts:
    """Memoised single-token decoding (top-logprob keys are decoded once per vocabulary entry)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, token: int) -> str:
        if token not in self.cache:
            self.cache[token] = self.tokenizer.decode([token])
        return self.cache[token]
