"""Log-likelihood of continuations given contexts, with a transformers and a vLLM backend.

docs/methods.md §6.2 (MMLU): the prediction is the choice with the highest log-likelihood, as in
lm-evaluation-harness. Tokenisation follows its HF backend so the numbers match it: trailing whitespace of the
context moves to the continuation, the continuation's tokens are `encode(context + continuation)` minus the
tokens of `encode(context)`, special tokens are added unless the text already starts with the BOS string, and a
sequence longer than `max_length + 1` tokens loses tokens from the left.

Requests whose model input (`(context + continuation)[:-1]`, truncated) is identical are scored by one forward pass:
MMLU's four answer letters share it, so a question costs one sequence rather than four.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from posttrain.errors import UsageError
from posttrain.models import left_pad

Request = tuple[str, str]  # (context, continuation)
Encoded = tuple[list[int], list[int]]  # (context tokens, continuation tokens)

DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when neither the config nor the tokenizer names a length
_TOKENIZER_UNLIMITED = 1_000_000_000_000  # tokenizers without a limit report a huge model_max_length


def resolve_max_length(config, tokenizer) -> int:
    """The model's context length, looked up in lm-eval's order: config, then tokenizer, then 2048."""
    config = getattr(config, "text_config", None) or config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(config, name, None) is not None:
            return int(getattr(config, name))
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit is not None and limit < _TOKENIZER_UNLIMITED else DEFAULT_MAX_LENGTH


def _prefix_token_id(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """Encode with the tokenizer's special tokens, except for texts that already start with the BOS string
    (a rendered chat template), which would otherwise get a second BOS."""
    bos_text = tokenizer.decode([_prefix_token_id(tokenizer)])
    out: list[list[int]] = [[] for _ in texts]
    for add_special in (True, False):
        indices = [i for i, t in enumerate(texts) if (not bos_text or not t.startswith(bos_text)) == add_special]
        if indices:
            ids = tokenizer([texts[i] for i in indices], add_special_tokens=add_special)["input_ids"]
            for i, row in zip(indices, ids):
                out[i] = list(row)
    return out


def encode_requests(tokenizer, requests: list[Request]) -> list[Encoded]:
    """(context tokens, continuation tokens) per request, split the way lm-eval's HF backend splits them."""
    split = []
    for context, continuation in requests:
        stripped = context.rstrip()
        split.append((stripped, context[len(stripped):] + continuation))
    contexts = sorted({c for c, _ in split if c})
    context_ids = dict(zip(contexts, _encode_many(tokenizer, contexts)))
    whole_ids = _encode_many(tokenizer, [c + x for c, x in split if c])
    encoded, next_whole = [], iter(whole_ids)
    for context, continuation in split:
        if context:
            ctx = context_ids[context]
            encoded.append((ctx, next(next_whole)[len(ctx):]))
            continue
        # Empty context: condition on the BOS (else EOS) token alone.
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        prefix = _prefix_token_id(tokenizer)
        encoded.append(([prefix], cont) if cont[0] != prefix else (cont[:1], cont[1:]))
    return encoded


def is_truncated(encoded: Encoded, max_length: int) -> bool:
    return len(encoded[0]) + len(encoded[1]) > max_length + 1


@dataclass
class ScoringGroup:
    """One model input and the requests it scores: (request index, continuation tokens)."""

    input_ids: tuple[int, ...]
    members: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)

    @property
    def positions(self) -> int:
        """How many trailing positions of the input predict a continuation token."""
        return max(len(cont) for _, cont in self.members)


def plan_groups(encoded: list[Encoded], max_length: int) -> list[ScoringGroup]:
    """Left-truncate each sequence to `max_length + 1` tokens, drop its last token to get the model input, group
    requests with equal inputs, and order the groups longest first (less padding per batch)."""
    groups: dict[tuple[int, ...], ScoringGroup] = {}
    for index, (context, continuation) in enumerate(encoded):
        if not continuation:
            raise UsageError(f"request {index} has an empty continuation; every choice must be non-empty text")
        if len(continuation) > max_length:
            raise UsageError(f"request {index}: continuation of {len(continuation)} tokens exceeds max_length "
                             f"{max_length}; raise --max_length or shorten the choices")
        inputs = tuple((context + continuation)[-(max_length + 1):][:-1])
        groups.setdefault(inputs, ScoringGroup(inputs)).members.append((index, tuple(continuation)))
    return sorted(groups.values(), key=lambda g: (-len(g.input_ids), g.input_ids))


class ContinuationScorer:
    """Shared by the backends: tokenisation, truncation, grouping. Subclasses score the groups."""

    name = "base"

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def score_continuations(self, requests: list[Request]) -> list[float]:
        """Sum of log-probabilities of each continuation's tokens given its context."""
        return self.score_encoded(encode_requests(self.tokenizer, requests))

    def score_encoded(self, encoded: list[Encoded]) -> list[float]:
        groups = plan_groups(encoded, self.max_length)
        scores = [0.0] * len(encoded)
        for group, group_scores in zip(groups, self._score_groups(groups)):
            for (index, _), score in zip(group.members, group_scores):
                scores[index] = score
        return scores

    def _score_groups(self, groups: list[ScoringGroup]) -> list[list[float]]:
        raise NotImplementedError


class TransformersScorer(ContinuationScorer):
    """Batched forward passes, left-padded so every row's scored positions are its last ones: only those
    positions go through the LM head (`logits_to_keep`) instead of the whole sequence times the vocabulary."""

    name = "transformers"

    def __init__(self, model, tokenizer, batch_size: int = 32, max_length: int | None = None):
        import inspect

        super().__init__(tokenizer, max_length or resolve_max_length(model.config, tokenizer))
        self.model, self.batch_size = model.eval(), batch_size
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def _score_groups(self, groups: list[ScoringGroup]) -> list[list[float]]:
        results = []
        for start in range(0, len(groups), self.batch_size):
            results.extend(self._score_batch(groups[start:start + self.batch_size]))
        return results

    def _score_batch(self, batch: list[ScoringGroup]) -> list[list[float]]:
        import torch

        device = next(self.model.parameters()).device
        keep = max(g.positions for g in batch)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids, mask = left_pad([g.input_ids for g in batch], pad)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": keep} if self._keeps_logits else {}
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                position_ids=positions.to(device), **kwargs).logits[:, -keep:]
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        scores = []
        for row, group in enumerate(batch):
            scores.append([sum(logprobs[row, keep - len(cont) + j, token].item() for j, token in enumerate(cont))
                           for _, cont in group.members])
        return scores


class VLLMScorer(ContinuationScorer):
    """One vLLM request per group: the input as the prompt and one generated token. The continuation's last token
    is read from `logprob_token_ids` at the generated position, earlier ones from `prompt_logprobs`. The engine
    holds the input plus one token, so the usable length is `max_model_len - 1`."""

    name = "vllm"

    def __init__(self, model: str, tokenizer, max_length: int | None = None, dtype: str = "auto",
                 gpu_memory_utilization: float | None = None, revision: str | None = None,
                 trust_remote_code: bool = False, seed: int = 0, llm=None):
        """Starts an engine for `model` (`start_vllm_engine`), or scores with `llm` (a running `vllm.LLM`)."""
        if llm is None:
            from transformers import AutoConfig

            from posttrain.generation.vllm_engine import start_vllm_engine

            config = AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)
            model_limit = resolve_max_length(config, tokenizer)
            llm = start_vllm_engine(model, revision=revision, trust_remote_code=trust_remote_code, dtype=dtype,
                                    seed=seed, max_model_len=min(model_limit, (max_length or model_limit) + 1),
                                    gpu_memory_utilization=gpu_memory_utilization)
        engine_limit = llm.llm_engine.vllm_config.model_config.max_model_len
        super().__init__(tokenizer, min(engine_limit - 1, max_length or engine_limit))
        self.llm = llm

    def close(self) -> None:
        """Stop the engine processes now (otherwise at garbage collection or exit)."""
        from posttrain.generation.vllm_engine import stop_vllm_engine

        stop_vllm_engine(self.llm)

    def _score_groups(self, groups: list[ScoringGroup]) -> list[list[float]]:
        from vllm import SamplingParams

        params = [SamplingParams(max_tokens=1, temperature=0.0, detokenize=False,
                                 logprob_token_ids=sorted({cont[-1] for _, cont in g.members}),
                                 prompt_logprobs=0 if g.positions > 1 else None) for g in groups]
        prompts = [{"prompt_token_ids": list(g.input_ids)} for g in groups]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for group, output in zip(groups, outputs):
            last = output.outputs[0].logprobs[0]
            prompt, n = output.prompt_logprobs, len(group.input_ids)
            results.append([last[cont[-1]].logprob + sum(prompt[n - len(cont) + 1 + j][token].logprob
                                                          for j, token in enumerate(cont[:-1]))
                            for _, cont in group.members])
        return results


BACKENDS = ("auto", "transformers", "vllm")


def load_scorer(model: str, tokenizer, backend: str = "auto", *, batch_size: int = 32, max_length: int | None = None,
                dtype: str = "auto", revision: str | None = None, trust_remote_code: bool = False,
                gpu_memory_utilization: float | None = None) -> ContinuationScorer:
    """A scorer for `model` on `backend` (one of BACKENDS; `auto`: vLLM when installed); its `name` is the backend.
    The transformers backend runs on the GPU when there is one; `batch_size` applies to it only."""
    from posttrain.generation.loading import resolve_backend

    if resolve_backend(backend, BACKENDS) == "vllm":
        return VLLMScorer(model, tokenizer, max_length, dtype, gpu_memory_utilization, revision, trust_remote_code)
    import torch

    from posttrain.models import load_causal_lm

    causal_lm = load_causal_lm(model, revision, trust_remote_code, dtype=dtype)
    return TransformersScorer(causal_lm.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer, batch_size,
                              max_length)
