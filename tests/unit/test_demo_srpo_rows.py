"""The rows of the SRPO demo's positive control, `sft-revise` (docs/methods.md §2)."""

from __future__ import annotations

import pytest

from posttrain.data.proving_ground import proving_ground_rows
from posttrain.demo_srpo import check_revision_tokens, revision_sft_rows
from posttrain.errors import UsageError
from posttrain.revision import RevisionTemplate


def test_revision_sft_rows_teach_the_answer_plain_from_a_wrong_draft_and_from_a_right_one():
    template = RevisionTemplate("{prompt} Draft: {draft} Improve the draft.")
    pair = proving_ground_rows("sort8/preference", "train", 1)[0]
    rows = revision_sft_rows([pair], template)
    question, wrong, right = pair["prompt"][0]["content"], pair["rejected"][0]["content"], pair["answer"]
    assert [row["completion"] for row in rows] == [pair["chosen"]] * 3
    assert [row["prompt"] for row in rows] == [
        pair["prompt"],
        [{"role": "user", "content": f"{question} Draft: {wrong} Improve the draft."}],
        [{"role": "user", "content": f"{question} Draft: {right} Improve the draft."}]]


def test_a_template_whose_tokens_merge_across_the_draft_slot_is_refused(tiny_model_dir):
    from posttrain.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    prompt, answer = [{"role": "user", "content": "sort 21"}], [{"role": "assistant", "content": "12"}]
    check_revision_tokens(tokenizer, RevisionTemplate("{prompt}\ndraft: {draft}\nfix it:"), prompt, "21", answer)
    with pytest.raises(UsageError, match="merges tokens across the revision template"):
        # the toy tokenizer has the token "ra": "\ndr" + "aft" tokenised apart differs from "\ndraft" as a whole
        check_revision_tokens(tokenizer, RevisionTemplate("{prompt}\ndr{draft}"), prompt, "aft 21", answer)
