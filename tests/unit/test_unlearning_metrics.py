"""LUME metrics (docs/methods.md §5.3) against values computed by hand."""

import pytest

from posttrain.errors import UsageError
from posttrain.evaluation import unlearning as m
from posttrain.evaluation.unlearning_data import load_rows


def test_rouge_l_recall_counts_the_gold_tokens_recovered():
    # gold: the cat sat on the mat (6 tokens); LCS with the generation: the, cat, on, mat -> 4/6
    assert m.rouge_l_recall("the cat sat on the mat", "the cat lay on a mat") == pytest.approx(4 / 6)
    assert m.rouge_l_recall("A b", "x a y b z") == 1.0  # recall ignores the generation's extra tokens


def test_rouge_l_recall_uses_the_stemmer():
    # stemmed gold: the dog were run; generation: dog run -> LCS 2 of 4 (0.25 without stemming: only "running")
    assert m.rouge_l_recall("The dogs were running", "dog running") == pytest.approx(0.5)


def test_exact_match_strips_and_lower_cases_only():
    assert m.exact_match("Paris", "  paris \n") == 1.0
    assert m.exact_match("Paris", "Paris.") == 0.0
    assert m.exact_match("2013", "2013 ") == 1.0


def test_generated_text_loses_spaces_before_punctuation_as_in_the_task_decoding():
    from posttrain.evaluation.unlearning_run import clean_up_spaces

    assert clean_up_spaces("It 's 1990 , isn't it ?") == "It's 1990, isn't it?"


@pytest.mark.parametrize("row_id, kind", [("61943187qa0", "qa"), ("6fe4-1c2sc1", "sc"), ("doc-sc12", "sc"),
                                          ("basic", None), ("doc", None), ("qa0x", None)])
def test_id_kind_reads_the_suffix(row_id, kind):
    assert m.id_kind(row_id) == kind


def test_harmonic_mean_with_a_zero_is_zero():
    assert m.harmonic_mean([0.5, 1.0]) == pytest.approx(2 / 3)
    assert m.harmonic_mean([0.9, 0.0, 1.0]) == 0.0
    assert m.harmonic_mean([]) is None


def _row(task, split, kind, score):
    return {"task": task, "split": split, "kind": kind, "score": score}


def test_aggregate_inverts_forget_and_takes_twelve_numbers():
    scored = [_row(t, s, k, 0.5) for t in ("Task1", "Task2", "Task3") for s in m.SPLITS for k in ("sc", "qa")]
    scored[0] = _row("Task1", "forget", "sc", 0.8)  # counts as 0.2
    numbers, empty = m.aggregate_numbers(m.task_means(scored))
    assert len(numbers) == 12 and not empty
    assert numbers[0] == {"task": "Task1", "split": "forget", "metric": "regurgitation", "raw": 0.8,
                          "value": pytest.approx(0.2)}
    assert m.harmonic_mean([n["value"] for n in numbers]) == pytest.approx(12 / (1 / 0.2 + 11 / 0.5))


def test_perfect_regurgitation_of_the_forget_set_gives_aggregate_zero():
    scored = [_row("T", s, k, 1.0) for s in m.SPLITS for k in ("sc", "qa")]
    assert m.summarize(scored, None, None)["aggregate"]["value"] == 0.0


def test_one_task_gives_four_numbers_and_empty_cells_are_listed():
    scored = [_row("facts", "forget", "sc", 0.0), _row("facts", "forget", "qa", 0.0),
              _row("facts", "retain", "sc", 1.0), _row("facts", "retain", "qa", 0.5)]
    numbers, empty = m.aggregate_numbers(m.task_means(scored))
    assert [n["value"] for n in numbers] == [1.0, 1.0, 1.0, 0.5] and empty == []
    numbers, empty = m.aggregate_numbers(m.task_means(scored[:3]))
    assert len(numbers) == 3 and empty == ["facts/retain/knowledge"]


def test_mia_at_chance_scores_one_and_a_perfect_attack_zero():
    assert m.mia_auc([1.0, 2.0], [1.0, 2.0]) == pytest.approx(0.5)
    assert m.mia_score(0.5) == 1.0
    assert m.mia_auc([1.0, 1.5], [3.0, 4.0]) == 1.0  # members have the lower loss: the attack always wins
    assert m.mia_score(1.0) == 0.0 and m.mia_score(0.0) == 0.0
    assert m.mia_score(0.75) == pytest.approx(0.5)


def test_final_is_the_mean_of_three_or_missing():
    scored = [_row("T", "forget", "sc", 0.0), _row("T", "retain", "sc", 1.0)]
    results = m.summarize(scored, {"auc": 0.5, "score": 1.0}, {"acc": 0.25})
    assert results["final"] == pytest.approx((1.0 + 1.0 + 0.25) / 3) and results["missing"] == []
    results = m.summarize(scored, None, {"acc": 0.25})
    assert results["final"] is None and results["missing"] == ["mia"]
    assert "missing: mia" in m.markdown_table(results)


def test_prompt_completion_sets_are_scored_both_ways():
    rows = load_rows("pg:facts/forget", "forget")
    assert {r["task"] for r in rows} == {"facts"}
    assert [r["kind"] for r in rows[:2]] == ["sc", "qa"] and rows[0]["input"] == rows[1]["input"]
    assert rows[0]["output"] == rows[1]["output"] and rows[0]["output"].endswith(".")


def test_a_row_id_without_kind_is_refused(tmp_path):
    path = tmp_path / "forget.jsonl"
    path.write_text('{"id": "doc1", "input": "a", "output": "b", "task": "Task1"}\n')
    with pytest.raises(UsageError, match="does not end in sc<digit>"):
        load_rows(str(path), "forget")


def test_prompt_completion_rows_are_mia_documents_joined_like_the_forget_rows():
    from posttrain.evaluation.unlearning_data import read_documents

    documents = read_documents("pg:facts/holdout", "--mia_nonmembers")
    assert len(documents) == 60 and documents[0].endswith(".") and "  " not in documents[0]
