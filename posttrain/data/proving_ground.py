"""Datasets of every kind the five objectives need, built from the proving-ground tasks.

Name them in a recipe as `dataset_name: pg:<task>/<kind>`, e.g. `pg:sort8/preference`.
"""

from __future__ import annotations

from posttrain.data.tasks import FactsTask, SortTask, _rng, assistant, get_task, user
from posttrain.errors import UsageError


def _sort_rows(task: SortTask, kind: str, split: str, n: int, seed: int) -> list[dict]:
    rng = _rng(task.name, kind, split, seed)
    rows = []
    for digits in task.problems(split, n, seed):
        prompt, answer = task.prompt(digits), task.answer(digits)
        base = {"prompt": user(prompt), "answer": answer}
        if kind == "sft":
            rows.append({**base, "completion": assistant(answer)})
        elif kind == "preference":
            rows.append({**base, "chosen": assistant(answer), "rejected": assistant(task.corrupt(answer, rng))})
        elif kind == "verifiable":
            rows.append({**base, "teachers": task.teacher_traces(digits)})
        elif kind == "revision":
            rows.append({**base, "draft": task.corrupt(answer, rng), "revision": answer})
        else:
            raise UsageError(f"task {task.name} has no dataset kind {kind!r}; "
                             "choose sft, preference, verifiable or revision")
    return rows


def _facts_rows(task: FactsTask, kind: str, split: str, n: int | None, seed: int) -> list[dict]:
    if kind not in ("forget", "retain", "holdout", "all"):
        raise UsageError(f"task facts has no dataset kind {kind!r}; choose forget, retain, holdout (never trained "
                         "on) or all (forget + retain)")
    rows = [{**fact, "completion": " " + fact["answer"] + "."} for fact in task.facts(seed)
            if fact["split"] == kind or (kind == "all" and fact["split"] != "holdout")]
    return rows[:n] if n else rows


def proving_ground_rows(spec: str, split: str = "train", n: int | None = None, seed: int = 0) -> list[dict]:
    """Rows for `spec` = '<task>/<kind>'. `n` defaults to 1000 train or 500 test problems for sort tasks."""
    task_name, _, kind = spec.partition("/")
    task = get_task(task_name)
    if not kind:
        raise UsageError(f"proving-ground dataset {spec!r} needs a kind, e.g. pg:{task_name}/sft")
    if isinstance(task, FactsTask):
        return _facts_rows(task, kind, split, n, seed)
    if split not in ("train", "test"):
        raise UsageError(f"proving-ground split {split!r} is unknown; use train or test")
    return _sort_rows(task, kind, split, n or (task.test_size if split == "test" else 1000), seed)


def proving_ground_dataset(spec: str, split: str = "train", n: int | None = None, seed: int = 0):
    from datasets import Dataset

    return Dataset.from_list(proving_ground_rows(spec, split, n, seed))
