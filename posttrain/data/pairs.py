"""On-policy preference pairs: sample the model, judge each sample, pair a correct one with a wrong one.

This is how the proving ground builds DPO-family data from a model's own outputs (docs/methods.md §8: top-k
sampling from a half-trained model gives far more usable pairs than full-vocabulary sampling).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from posttrain.generation import Generator, SamplingParams


def sample_preference_pairs(generator: Generator, rows: list[dict], score: Callable[[str, str], float],
                            params: SamplingParams, seed: int = 0) -> tuple[list[dict], dict]:
    """For each row (`prompt` messages, `answer`), `params.n` samples; keep prompts with both a correct and a
    wrong sample. Returns the pairs (prompt/chosen/rejected/answer) and counts of easy/hard/mixed prompts."""
    rng = random.Random(seed)
    samples = generator.generate([row["prompt"] for row in rows], params)
    pairs, stats = [], {"prompts": len(rows), "all_correct": 0, "none_correct": 0, "mixed": 0}
    for row, completions in zip(rows, samples, strict=True):
        texts = [c.text for c in completions]
        good = [t for t in texts if score(t, row["answer"]) > 0]
        bad = [t for t in texts if score(t, row["answer"]) == 0]
        if not bad:
            stats["all_correct"] += 1
        elif not good:
            stats["none_correct"] += 1
        else:
            stats["mixed"] += 1
            pairs.append({"prompt": row["prompt"], "answer": row["answer"],
                          "chosen": [{"role": "assistant", "content": rng.choice(good)}],
                          "rejected": [{"role": "assistant", "content": rng.choice(bad)}]})
    stats["pairs"] = len(pairs)
    return pairs, stats
