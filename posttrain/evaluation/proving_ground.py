"""Proving-ground evaluation: greedy decoding on held-out problems, scored by the task's programmatic judge.

Gives accuracy, and, against a baseline model (usually the SFT checkpoint), a rule-judge win rate in
AlpacaEval conventions. The generator is any `posttrain.generation.Generator`.
"""

from __future__ import annotations

import time

from posttrain.console import is_silent
from posttrain.data.proving_ground import proving_ground_rows
from posttrain.data.tasks import get_eval_task
from posttrain.evaluation.winrate import winrate_metrics
from posttrain.generation import Generator, SamplingParams
from posttrain.judges import RuleJudge


def greedy_outputs(generator: Generator, prompts, max_new_tokens: int) -> list[str]:
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    return [completions[0].text for completions in generator.generate(prompts, params)]


def evaluate_task(generator: Generator, task_name: str, num_examples: int = 200, seed: int = 0,
                  baseline: Generator | None = None) -> dict:
    """Accuracy on the task's test split; with `baseline`, the rule-judge win rate of `generator` over it."""
    task = get_eval_task(task_name)
    rows = proving_ground_rows(f"{task_name}/sft", split="test", n=num_examples, seed=seed)
    prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
    max_new = task.num_digits + 4
    outputs = greedy_outputs(generator, prompts, max_new)
    result = {"task": task_name, "n": len(rows),
              "accuracy": sum(task.score(o, a) for o, a in zip(outputs, answers)) / len(rows),
              "examples": [{"prompt": p[0]["content"], "output": o, "answer": a}
                           for p, o, a in list(zip(prompts, outputs, answers))[:5]]}
    if baseline is not None:
        reference = greedy_outputs(baseline, prompts, max_new)
        preferences = RuleJudge(task.score).judge([p[0]["content"] for p in prompts], reference, outputs, answers)
        result["baseline_accuracy"] = sum(task.score(o, a) for o, a in zip(reference, answers)) / len(rows)
        result["vs_baseline"] = winrate_metrics(preferences)
    return result


def epoch_accuracy_callback(task: str, tokenizer, eval_examples: int, dataset_seed: int, points: list[dict]):
    """A TrainerCallback that appends {epoch, step, accuracy, train_seconds, eval_seconds} to `points` at each epoch
    end, judging the in-memory model (training seconds exclude these evaluations)."""
    from transformers import TrainerCallback

    from posttrain.generation import TransformersGenerator

    class EpochAccuracy(TrainerCallback):
        def __init__(self):
            self.start, self.eval_seconds = None, 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            began = time.perf_counter()
            result = evaluate_task(TransformersGenerator(model, tokenizer), task, eval_examples, dataset_seed)
            ended = time.perf_counter()
            points.append({"epoch": round(state.epoch), "step": state.global_step, "accuracy": result["accuracy"],
                           "train_seconds": round(began - self.start - self.eval_seconds, 1),
                           "eval_seconds": round(ended - began, 1)})
            self.eval_seconds += ended - began
            if not is_silent():
                print(f"epoch {points[-1]['epoch']} step {state.global_step}: {task} accuracy {result['accuracy']:.3f} "
                      f"({points[-1]['train_seconds']} s training)", flush=True)

    return EpochAccuracy()
