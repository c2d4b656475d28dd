"""DYPO's data checks and verifiable rewards (docs/methods.md §4), wired in by the method's construction hook.

Rows hold a `prompt`, a verifiable `answer` and m >= 1 teacher traces in `teacher_columns` (the proving ground's
`pg:sort8/verifiable` has two in `teachers`). Rewards are 1.0 for a correct final answer, else 0.0:
`exact_match` compares the completion's last whitespace-separated field with the answer (the proving-ground judge);
`math_verify` parses and compares both with the maintained `math-verify` package (real maths recipes).
"""

from __future__ import annotations

from posttrain.data.tasks import final_answer
from posttrain.errors import UsageError


def completion_text(completion) -> str:
    """A completion's text: a plain string, or the content of its last (assistant) message."""
    if isinstance(completion, str):
        return completion
    return completion[-1]["content"] if completion else ""


def exact_match_reward(completions, answer, **kwargs) -> list[float]:
    """1.0 when the completion's final field equals the answer exactly, else 0.0."""
    return [float(final_answer(completion_text(c)) == str(a).strip()) for c, a in zip(completions, answer,
                                                                                      strict=True)]


def _as_math(answer: str) -> str:
    """math-verify extracts LaTeX between delimiters; a bare answer column ("\\frac{1}{2}", "3") gets them."""
    return answer if "$" in answer or "\\boxed" in answer else f"${answer}$"


def math_verify_reward(completions, answer, **kwargs) -> list[float]:
    """1.0 when math-verify finds the completion's answer equal to the reference answer, else 0.0."""
    from math_verify import parse, verify

    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        gold = parse(_as_math(str(reference)))
        rewards.append(float(bool(gold) and verify(gold, parse(completion_text(completion)))))
    return rewards


REWARDS = {"exact_match": exact_match_reward, "math_verify": math_verify_reward}


def check_teachers(dataset, columns: list[str], num_teachers: int | None, name: str) -> None:
    """One-line `UsageError` for a missing teacher column, a non-text trace, or a row with fewer traces than asked."""
    from posttrain.trainers.dypo import teacher_traces

    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise UsageError(f"{name} is missing teacher column(s) {', '.join(missing)} (teacher_columns); has: "
                         f"{', '.join(sorted(dataset.column_names))}")
    needed = num_teachers or 1
    for start, batch in enumerate(dataset.select_columns(columns).iter(batch_size=1000)):
        for offset in range(len(batch[columns[0]])):
            row_index = start * 1000 + offset
            traces = teacher_traces({c: batch[c][offset] for c in columns}, columns, None)
            if not all(isinstance(trace, str) for trace in traces):
                raise UsageError(f"{name} row {row_index}: teacher traces in {', '.join(columns)} must be strings")
            if len(traces) < needed:
                raise UsageError(f"{name} row {row_index} has {len(traces)} teacher trace(s) in "
                                 f"{', '.join(columns)} but num_teachers is {needed}; add traces or lower "
                                 f"num_teachers")


def construction_hook(recipe, tokenizer, train_dataset, eval_dataset) -> dict:
    """The trainer's reward function (the recipe's `answer_reward`), after checking the teacher columns."""
    args = recipe.training
    check_teachers(train_dataset, args.teacher_columns, args.num_teachers, f"dataset {recipe.run.dataset_name!r}")
    if eval_dataset is not None:
        check_teachers(eval_dataset, args.teacher_columns, args.num_teachers,
                       f"eval split of {recipe.run.dataset_name!r}")
    return {"reward_funcs": [REWARDS[args.answer_reward]]}
