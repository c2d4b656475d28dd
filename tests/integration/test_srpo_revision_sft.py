"""The SRPO demo's positive control (`sft-revise`, docs/methods.md §2): SFT on revision rows trains exactly the token
ids that revision inference prompts with."""

from __future__ import annotations

import pytest

from posttrain.data.proving_ground import proving_ground_rows
from posttrain.demo import toy_recipe
from posttrain.demo_srpo import revision_sft_rows
from posttrain.io import write_jsonl
from posttrain.recipe import load_recipe
from posttrain.revision import DEFAULT_REVISION_TEMPLATE, RevisionTemplate, completion_text
from posttrain.train import build_trainer


@pytest.mark.parametrize("text", [DEFAULT_REVISION_TEMPLATE, "{prompt}\ndraft: {draft}\nfix it:"])
def test_sft_on_revision_rows_trains_the_revision_prompt_ids_then_the_completion(tiny_model_dir, tmp_path, text):
    template = RevisionTemplate(text)
    pair = proving_ground_rows("sort8/preference", "train", 1)[0]
    write_jsonl(tmp_path / "rows.jsonl", revision_sft_rows([pair], template))
    recipe = load_recipe(toy_recipe("sft"), model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "run"),
                         dataset_name=str(tmp_path / "rows.jsonl"))
    trainer = build_trainer(recipe)
    tokenizer = trainer.processing_class
    completion = tokenizer(completion_text(pair["chosen"]) + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    trained = trainer.train_dataset
    assert len(trained) == 3
    for index, draft in ((1, pair["rejected"]), (2, pair["chosen"])):  # row 0 is the plain x -> y_w
        prompt_ids = template.prompt_ids(tokenizer, pair["prompt"], completion_text(draft))
        assert trained[index]["input_ids"] == prompt_ids + completion
        assert trained[index]["labels"] == [-100] * len(prompt_ids) + completion  # loss on the completion only
