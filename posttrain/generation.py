"""One `Generator` interface for sampling and greedy decoding.

This module has the transformers backend (fast for tiny models, and usable on a model held in memory during
training). The vLLM backend plugs in behind the same `generate` signature and `Completion` result type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    """Shared by every backend. temperature 0 means greedy."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 32
    seed: int = 0


@dataclass
class Completion:
    prompt_index: int
    text: str
    token_ids: list[int] = field(default_factory=list)


class Generator(Protocol):
    def generate(self, prompts: list[list[dict]] | list[str], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt (chat messages or raw text), `params.n` completions."""


class TransformersGenerator:
    """Batched `model.generate` with left padding; chat prompts go through the tokenizer's chat template."""

    def __init__(self, model, tokenizer, batch_size: int = 256, show_progress: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.show_progress = batch_size, show_progress

    def _encode(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return list(self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                       return_dict=True)["input_ids"])

    def generate(self, prompts, params: SamplingParams) -> list[list[Completion]]:
        import torch
        from tqdm.auto import tqdm

        encoded = [self._encode(p) for p in prompts]
        results: list[list[Completion]] = [[] for _ in prompts]
        pad = self.tokenizer.pad_token_id
        was_training = self.model.training
        self.model.eval()
        torch.manual_seed(params.seed)
        device = next(self.model.parameters()).device
        starts = range(0, len(encoded), self.batch_size)
        for start in tqdm(starts, desc="generate", disable=not self.show_progress):
            batch = encoded[start:start + self.batch_size]
            width = max(map(len, batch))
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=device)
            attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
            sample = params.temperature > 0
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=input_ids, attention_mask=attention, max_new_tokens=params.max_new_tokens,
                    do_sample=sample, temperature=params.temperature if sample else None,
                    top_p=params.top_p if sample else None, top_k=(params.top_k or None) if sample else None,
                    num_return_sequences=params.n, pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id,
                )
            for row, ids in enumerate(out[:, width:].tolist()):
                ids = _until_eos(ids, self.tokenizer.eos_token_id, pad)
                index = start + row // params.n
                results[index].append(Completion(index, self.tokenizer.decode(ids, skip_special_tokens=True), ids))
        self.model.train(was_training)
        return results


def _until_eos(ids: list[int], eos: int, pad: int) -> list[int]:
    out = []
    for token in ids:
        if token in (eos, pad):
            break
        out.append(token)
    return out
