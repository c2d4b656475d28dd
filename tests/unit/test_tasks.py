"""Proving-ground tasks and datasets: deterministic, disjoint splits, correct judges, every dataset kind."""

from __future__ import annotations

import random

import pytest

from posttrain.data import REQUIRED_COLUMNS, proving_ground_dataset, proving_ground_rows, validate_columns
from posttrain.data.tasks import FactsTask, SortTask, final_answer, get_task
from posttrain.errors import UsageError


def test_sort_task_is_deterministic_and_splits_are_disjoint():
    task = SortTask(8)
    assert task.problems("train", 50, seed=3) == task.problems("train", 50, seed=3)
    assert task.problems("train", 50, seed=3) != task.problems("train", 50, seed=4)
    test = set(task.problems("test", 500))
    assert len(test) == 500
    assert not test & set(task.problems("train", 5000))


def test_sort_judge_and_answer():
    task = SortTask(8)
    assert task.prompt("38172049") == "sort 38172049"
    assert task.answer("38172049") == "01234789"
    assert task.score("01234789", "01234789") == 1.0
    assert task.score(" 0 1 2 3 4 7 8 9 = 01234789", "01234789") == 1.0  # teacher trace style
    assert task.score("01234798", "01234789") == 0.0
    assert task.score("", "01234789") == 0.0
    assert final_answer("  a b  c ") == "c"


def test_corruptions_are_always_wrong():
    task, rng = SortTask(8), random.Random(0)
    for digits in task.problems("train", 300):
        answer = task.answer(digits)
        assert task.score(task.corrupt(answer, rng), answer) == 0.0


@pytest.mark.parametrize("kind", ["sft", "preference", "verifiable", "revision"])
def test_sort_dataset_kinds_have_their_columns(kind):
    rows = proving_ground_rows(f"sort8/{kind}", n=20)
    assert len(rows) == 20
    assert set(REQUIRED_COLUMNS[kind]) <= set(rows[0])
    validate_columns(proving_ground_dataset(f"sort8/{kind}", n=5), kind)
    assert rows[0]["prompt"] == [{"role": "user", "content": rows[0]["prompt"][0]["content"]}]


def test_preference_pairs_prefer_the_correct_answer():
    task = get_task("sort8")
    for row in proving_ground_rows("sort8/preference", n=50):
        assert task.score(row["chosen"][0]["content"], row["answer"]) == 1.0
        assert task.score(row["rejected"][0]["content"], row["answer"]) == 0.0


def test_verifiable_rows_carry_two_correct_teacher_traces():
    task = get_task("sort8")
    for row in proving_ground_rows("sort8/verifiable", n=20):
        assert len(row["teachers"]) == 2 and row["teachers"][0] != row["teachers"][1]
        assert all(task.score(t, row["answer"]) == 1.0 for t in row["teachers"])


def test_revision_rows_improve_the_draft():
    task = get_task("sort8")
    for row in proving_ground_rows("sort8/revision", n=20):
        assert task.score(row["draft"], row["answer"]) == 0.0 and task.score(row["revision"], row["answer"]) == 1.0


def test_facts_forget_and_retain_are_disjoint_people():
    forget = proving_ground_rows("facts/forget")
    retain = proving_ground_rows("facts/retain")
    assert len(forget) == 60 and len(retain) == 540  # 200 people x 3 facts, 10% forgotten
    assert not {r["subject"] for r in forget} & {r["subject"] for r in retain}
    assert all(r["prompt"].startswith(r["subject"]) for r in forget)
    assert FactsTask().score(forget[0]["completion"], forget[0]["answer"]) == 1.0
    validate_columns(proving_ground_dataset("facts/all"), "unlearning")


@pytest.mark.parametrize(("spec", "message"), [("sort9/sft", "unknown proving-ground task"),
                                               ("sort8", "needs a kind"), ("sort8/nope", "no dataset kind"),
                                               ("facts/sft", "no dataset kind")])
def test_bad_specs(spec, message):
    with pytest.raises(UsageError, match=message):
        proving_ground_rows(spec)
