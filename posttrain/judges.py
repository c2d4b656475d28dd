"""Pairwise judges with AlpacaEval's preference convention: 1 = reference wins, 2 = model wins, 1.5 = tie.

Every judge has `annotate(instructions, references, outputs, answers=None) -> list[Annotation]`; an annotation
whose judge could not decide has `preference=None` (it is counted as failed, never scored as a tie). `judge(...)`
returns just the preferences; `annotate_cached` streams annotations to a resumable JSON-lines cache.
`judge_from_spec` builds a judge from a one-string spec (`posttrain eval winrate --judge`, `posttrain iterate`'s
`judge`). docs/methods.md §6.1 (win rate) and §3 (INPO's ranking judge, the length-biased rule judge).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from posttrain.console import resumed_bar
from posttrain.errors import UsageError
from posttrain.io import ResumableJsonl
from posttrain.preference_scale import MODEL_WINS, REFERENCE_WINS, TIE, sigmoid


@dataclass
class Annotation:
    preference: float | None  # None: the judge failed on this example
    swapped: bool = False  # the model's output was shown first
    raw: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.preference is None


class PairwiseJudge(Protocol):
    name: str

    def annotate(self, instructions: Sequence[str], references: Sequence[str], outputs: Sequence[str],
                 answers: Sequence[str] | None = None) -> list[Annotation]:
        """One annotation per example."""


class _Judge:
    name = "judge"

    def judge(self, instructions, references, outputs, answers=None) -> list[float | None]:
        """One preference in [1, 2] per example, None where the judge failed."""
        return [a.preference for a in self.annotate(instructions, references, outputs, answers)]


class RuleJudge(_Judge):
    """Scores each output with `score(completion, answer) -> float` and prefers the higher score."""

    def __init__(self, score: Callable[[str, str], float], name: str = "rule"):
        self.score, self.name = score, name

    def annotate(self, instructions, references, outputs, answers=None) -> list[Annotation]:
        if answers is None:
            raise UsageError("the rule judge needs gold answers: use instructions with an 'answer' column")
        annotations = []
        for reference, output, answer in zip(references, outputs, answers, strict=True):
            model, base = self.score(output, answer), self.score(reference, answer)
            preference = MODEL_WINS if model > base else REFERENCE_WINS if base > model else TIE
            annotations.append(Annotation(preference, raw={"score_model": model, "score_reference": base}))
        return annotations


class LengthBiasedRuleJudge(RuleJudge):
    """A rule judge with a documented length bias, as real LLM judges have (AlpacaEval's reason for its length-
    controlled win rate): the rule score decides; on a tie the longer output (characters, surrounding whitespace
    stripped) wins; equal lengths stay a tie. `raw["length_tie_break"]` marks the annotations the bias decided."""

    def annotate(self, instructions, references, outputs, answers=None) -> list[Annotation]:
        annotations = super().annotate(instructions, references, outputs, answers)
        for annotation, reference, output in zip(annotations, references, outputs, strict=True):
            model, base = len(output.strip()), len(reference.strip())
            if annotation.preference == TIE and model != base:
                annotation.preference = MODEL_WINS if model > base else REFERENCE_WINS
                annotation.raw["length_tie_break"] = True
        return annotations


class RewardModelJudge(_Judge):
    """A sequence-classification reward model (one logit) scores (instruction, output) through the tokenizer's chat
    template; preference = 1 + sigmoid(score_model - score_reference)."""

    def __init__(self, model, tokenizer, batch_size: int = 8, name: str = "reward"):
        self.model, self.tokenizer, self.batch_size, self.name = model, tokenizer, batch_size, name

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs) -> RewardModelJudge:
        from transformers import AutoModelForSequenceClassification

        from posttrain.models import load_tokenizer

        tokenizer = load_tokenizer(name_or_path)  # a missing local path stops here, in one line
        try:
            model = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=1)
        except OSError as err:
            raise UsageError(f"cannot load reward model {name_or_path!r}: {str(err).splitlines()[0]}") from None
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model, tokenizer, name=f"reward:{name_or_path}", **kwargs)

    def scores(self, instructions: Sequence[str], outputs: Sequence[str]) -> list[float]:
        import torch

        encoded = [list(self.tokenizer.apply_chat_template(
            [{"role": "user", "content": i}, {"role": "assistant", "content": o}], tokenize=True,
            return_dict=True)["input_ids"]) for i, o in zip(instructions, outputs, strict=True)]
        pad, device = self.tokenizer.pad_token_id, next(self.model.parameters()).device
        self.model.eval()
        scores: list[float] = []
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start:start + self.batch_size]
            width = max(map(len, batch))
            ids = torch.tensor([x + [pad] * (width - len(x)) for x in batch], device=device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch], device=device)
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits
            scores.extend(logits[:, 0].float().tolist())
        return scores

    def annotate(self, instructions, references, outputs, answers=None) -> list[Annotation]:
        model_scores = self.scores(instructions, outputs)
        reference_scores = self.scores(instructions, references)
        return [Annotation(1.0 + sigmoid(m - r), raw={"score_model": m, "score_reference": r})
                for m, r in zip(model_scores, reference_scores)]


JUDGE_PROMPT = """Compare two responses to the same instruction and decide which one serves the user better: \
more correct, more helpful and more to the point. The order in which they are shown means nothing, and a longer \
response is not better for being longer.

# Instruction
{instruction}

# Output ({first_label})
{first}

# Output ({second_label})
{second}

Which output is better? Answer with the single letter {first_label} or {second_label}."""


class LLMJudge(_Judge):
    """A judge model behind any `posttrain.generation.Generator` (transformers, vLLM, an OpenAI-compatible server).

    Per example the two outputs are shown in an order drawn from `seed` and the example's text (`swapped`: the
    model's output came first); the preference is read from the log-probs of the two labels at the first answer
    token, with the swap undone: 1 + P(model's label) / (P(label a) + P(label b)). A label outside the top
    log-probs counts as probability 0; if neither label is there, the annotation fails (preference None).
    """

    def __init__(self, generator, seed: int = 0, labels: tuple[str, str] = ("a", "b"), top_logprobs: int = 20,
                 name: str = "llm"):
        self.generator, self.seed, self.labels = generator, seed, labels
        self.top_logprobs, self.name = top_logprobs, name

    def is_swapped(self, instruction: str, reference: str, output: str) -> bool:
        # A str seed is hashed with SHA-512 by `random`, so the draw is stable across runs and processes.
        return random.Random(f"{self.seed}\n{instruction}\n{reference}\n{output}").random() < 0.5

    def prompt(self, instruction: str, first: str, second: str) -> list[dict]:
        a, b = self.labels
        text = JUDGE_PROMPT.format(instruction=instruction, first=first, second=second, first_label=a,
                                   second_label=b)
        return [{"role": "user", "content": text}]

    def check_fits(self, prompts: list[list[dict]], to_generate: int, fix: str) -> None:
        """A one-line UsageError unless the longest of `prompts`, plus `to_generate` output tokens not yet in them,
        plus the one answer token, fits the judge model's context. Reads only the model's config and tokenizer (no
        weights); a judge whose context cannot be read (a server) is not checked."""
        from posttrain.generation.context import context_window, longest_prompt_tokens
        from posttrain.models import load_tokenizer

        source = getattr(self.generator, "source", None)
        context = context_window(source) if source else None
        if context is None:
            return
        longest = longest_prompt_tokens(load_tokenizer(source), prompts) + to_generate + 1
        if longest > context:
            raise UsageError(f"the LLM judge's prompt can reach {longest} tokens ({longest} > {context}), more than "
                             f"the {context}-position context of judge model {source}; {fix}use a judge model with "
                             f"a longer context or shorter instructions and outputs")

    def annotate(self, instructions, references, outputs, answers=None) -> list[Annotation]:
        from posttrain.generation import SamplingParams

        swaps = [self.is_swapped(i, r, o) for i, r, o in zip(instructions, references, outputs, strict=True)]
        prompts = [self.prompt(i, o, r) if s else self.prompt(i, r, o)
                   for i, r, o, s in zip(instructions, references, outputs, swaps)]
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=1, logprobs=self.top_logprobs)
        results = self.generator.generate(prompts, params)
        return [self._read(completions[0], swapped) for completions, swapped in zip(results, swaps, strict=True)]

    def _read(self, completion, swapped: bool) -> Annotation:
        if not completion.top_logprobs:
            raise UsageError("the LLM judge's generator returned no log-probs; use a backend that supports them")
        top = completion.top_logprobs[0]
        p_first, p_second = (label_probability(top, label) for label in self.labels)
        raw = {"text": completion.text, "p_first": p_first, "p_second": p_second}
        if p_first + p_second == 0.0:
            return Annotation(None, swapped, {**raw, "top_logprobs": top})
        p_model = p_first if swapped else p_second
        return Annotation(1.0 + p_model / (p_first + p_second), swapped, raw)


def label_probability(top_logprobs: dict[str, float], label: str) -> float:
    """Total probability of the tokens that decode to `label` (ignoring surrounding whitespace)."""
    return math.fsum(math.exp(lp) for token, lp in top_logprobs.items() if token.strip() == label)


def annotation_key(judge_config: dict, instruction: str, reference: str, output: str) -> str:
    """The cache key of one judged example: a hash of the judge's settings and the example's texts."""
    text = json.dumps([judge_config, instruction, reference, output], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def annotate_cached(judge: PairwiseJudge, instructions: Sequence[str], references: Sequence[str],
                    outputs: Sequence[str], cache: str | os.PathLike, judge_config: dict,
                    answers: Sequence[str | None] | None = None, batch_size: int = 32,
                    progress: str | None = None) -> list[dict]:
    """`judge.annotate`, resumable: examples already in the `cache` JSON lines under this `judge_config` are not
    judged again, and each batch is appended as it is judged. Returns {key, preference, swapped, raw} per example.
    A batch gets gold `answers` only where every example in it has one. With `progress` (a label), says how many
    annotations the cache served and draws a bar for the rest."""
    keys = [annotation_key(judge_config, i, r, o) for i, r, o in zip(instructions, references, outputs, strict=True)]
    store = ResumableJsonl(cache, key=lambda record: record["key"])
    todo = [i for i, key in enumerate(keys) if key not in store.done]
    with resumed_bar(progress, len(keys) - len(todo), "annotations", cache, len(todo)) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            gold = None if answers is None else [answers[i] for i in batch]
            found = judge.annotate([instructions[i] for i in batch], [references[i] for i in batch],
                                   [outputs[i] for i in batch], None if gold is None or None in gold else gold)
            store.extend({"key": keys[i], "preference": a.preference, "swapped": a.swapped, "raw": a.raw}
                         for i, a in zip(batch, found))
            bar.update(len(batch))
    return [store.done[key] for key in keys]


JUDGE_KINDS = ("rule", "rule-longer", "reward", "llm", "llm-openai")
JUDGE_SPECS = "rule:<task>, rule-longer:<task>, reward:<path>, llm:<path> or llm-openai:<base_url>#<model>"


def judge_labels(labels: str | Sequence[str], setting: str = "judge_labels") -> tuple[str, str]:
    """An LLM judge's two answer labels from "a,b" (or a pair), checked; `setting` names the option in the error."""
    pair = tuple(labels.split(",")) if isinstance(labels, str) else tuple(labels)
    if len(pair) != 2 or not all(pair) or pair[0] == pair[1]:
        shown = labels if isinstance(labels, str) else ",".join(labels)
        raise UsageError(f"{setting} {shown!r} must be two different labels, e.g. a,b")
    return pair


def judge_from_spec(spec: str, pool=None, labels: str | Sequence[str] = ("a", "b"), seed: int = 0,
                    labels_setting: str = "judge_labels") -> PairwiseJudge:
    """A judge from its spec (`JUDGE_SPECS`): `rule:<task>` (the task's programmatic score), `rule-longer:<task>`
    (the same with ties to the longer output), `reward:<path>` (a sequence-classification reward model),
    `llm:<path>` (a judge model served by `pool`, a `posttrain.generation.ModelPool`) or
    `llm-openai:<base_url>#<model>` (an OpenAI-compatible server). `labels` and `seed` are the LLM judge's."""
    kind, _, target = spec.partition(":")
    if kind not in JUDGE_KINDS or not target:
        raise UsageError(f"unknown judge {spec!r}; use {JUDGE_SPECS}")
    if kind in ("rule", "rule-longer"):
        from posttrain.data import get_task

        judge_class = RuleJudge if kind == "rule" else LengthBiasedRuleJudge
        return judge_class(get_task(target).score, name=spec)
    if kind == "reward":
        return RewardModelJudge.from_pretrained(target)
    pair = judge_labels(labels, labels_setting)
    if kind == "llm":
        return LLMJudge(pool.lazy(target), seed=seed, labels=pair, name=spec)
    base_url, _, model = target.partition("#")
    if not model:
        raise UsageError(f"judge {spec!r} needs the served model's name: llm-openai:<base_url>#<model>")
    from posttrain.generation import OpenAICompatibleGenerator

    return LLMJudge(OpenAICompatibleGenerator(base_url, model, show_progress=False), seed=seed, labels=pair,
                    name=spec)  # annotate_cached draws the judging bar
