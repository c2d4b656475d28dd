"""The out-of-distribution proving-ground split (sort8-rep4): shifted digits, same judge, no tokenizer change."""

from __future__ import annotations

from posttrain.data import proving_ground_rows, tokenizer_corpus
from posttrain.data.tasks import OOD_TASKS, TASKS, SortTask, get_task


def test_sort8_has_a_registered_ood_split_with_few_distinct_digits():
    ood = get_task(OOD_TASKS["sort8"])
    assert isinstance(ood, SortTask) and ood.name == "sort8-rep4" and ood.name in TASKS
    for digits in ood.problems("train", 200) + ood.problems("test", 500):
        assert len(digits) == 8 and len(set(digits)) <= 4


def test_ood_split_is_deterministic_with_disjoint_train_and_test():
    ood = get_task("sort8-rep4")
    assert ood.problems("test", 500) == ood.problems("test", 500)
    assert not set(ood.problems("test", 500)) & set(ood.problems("train", 3000))


def test_ood_rows_use_the_sort_prompt_and_answer():
    row = proving_ground_rows("sort8-rep4/sft", "test", n=3)[0]
    digits = row["prompt"][0]["content"].removeprefix("sort ")
    assert row["answer"] == "".join(sorted(digits)) == row["completion"][0]["content"]


def test_in_distribution_tasks_keep_their_problems():
    """The problems sort8 drew before the `distinct` field existed (commit 21e82c8), so earlier runs still compare."""
    assert SortTask(8).name == "sort8"
    assert SortTask(8).problems("test", 3) == TASKS["sort8"].problems("test", 3) == ["47173016", "83513755", "91554658"]
    assert TASKS["sort8"].problems("train", 3) == ["38647850", "72848918", "15793111"]


def test_ood_split_adds_nothing_to_the_tokenizer_corpus():
    corpus = set(tokenizer_corpus())
    ood = get_task("sort8-rep4")
    assert not {ood.prompt(d) for d in ood.problems("train", 200)} & corpus
