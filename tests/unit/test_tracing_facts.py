"""The facts task's holdout split (non-members for membership inference, docs/methods.md §5): people never trained
on, drawn after the others so that the forget/retain facts and the tiny tokenizer's corpus are unchanged."""

from __future__ import annotations

from posttrain.data.proving_ground import proving_ground_rows
from posttrain.data.tasks import FactsTask, tokenizer_corpus


def test_holdout_people_are_new_and_never_in_the_training_facts():
    trained = proving_ground_rows("facts/all")
    holdout = proving_ground_rows("facts/holdout")
    assert len(trained) == 600 and len(holdout) == 60  # 20 more people x 3 facts
    assert {r["split"] for r in trained} == {"forget", "retain"} and {r["split"] for r in holdout} == {"holdout"}
    assert not {r["subject"] for r in holdout} & {r["subject"] for r in trained}


def test_holdout_leaves_the_other_facts_and_the_tokenizer_corpus_unchanged():
    without = FactsTask(num_holdout=0)
    assert [f for f in FactsTask().facts() if f["split"] != "holdout"] == without.facts()
    holdout_text = {f"{r['prompt']} {r['answer']}." for r in proving_ground_rows("facts/holdout")}
    assert not holdout_text & set(tokenizer_corpus())
