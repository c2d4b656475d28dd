"""SRPOTrainer: six sequences in one forward, the reference from the cache, the loss against an independent forward,
the template saved with the model, and regressions for the three faults of TRL pull request #1772."""

from __future__ import annotations

import json

import pytest
import torch

from posttrain.data import load_any_dataset
from posttrain.losses import SRPO_SEQUENCE_NAMES, srpo_loss
from posttrain.models import load_causal_lm, load_tokenizer
from posttrain.revision import RevisionTemplate
from posttrain.trainers.srpo import SRPOConfig, SRPOTrainer

from ..conftest import CPU_SETTINGS

ROWS, BATCH = 16, 8
TEMPLATE = "{prompt}\ndraft: {draft}\nfix it:"


def _trainer(model_dir, tmp_path, data=None, **config):
    config = {"max_length": 64, "seed": 0, "revision_template": TEMPLATE, "beta": 0.5, "alpha": 0.8,
              "ref_logps_cache_dir": str(tmp_path / "cache"), "logging_steps": 1, **config}
    args = SRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=BATCH, **CPU_SETTINGS, **config)
    data = data or load_any_dataset("pg:sort8/preference", "train", num_examples=ROWS)
    return SRPOTrainer(model=load_causal_lm(str(model_dir)), args=args, train_dataset=data,
                       processing_class=load_tokenizer(str(model_dir)))


def _batch(trainer) -> dict:
    return trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(BATCH)]))


def _independent_logps(model, batch) -> dict[str, torch.Tensor]:
    """Summed completion log-probs per sequence from a plain forward (no TRL or engine code)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    sums = (token_logps * batch["completion_mask"][:, 1:]).sum(dim=1)
    return dict(zip(SRPO_SEQUENCE_NAMES, sums.chunk(len(SRPO_SEQUENCE_NAMES))))


def test_one_forward_per_step_reference_from_the_cache_and_the_template_saved(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    assert trainer.ref_model is None and trainer.reference_forward_batches == ROWS // BATCH
    rows = []
    trainer.model.register_forward_hook(lambda module, args, kwargs, output: rows.append(len(kwargs["input_ids"])),
                                        with_kwargs=True)
    trainer.train()
    assert rows == [len(SRPO_SEQUENCE_NAMES) * BATCH] * 2  # one forward of all six sequences per step, no reference
    logged = trainer.state.log_history[0]
    assert {"loss/gen", "loss/improve", "rewards/revision_accuracies", "rewards/gen_accuracies",
            "rewards/accuracies", "logps/chosen_given_rejected"} <= set(logged)
    trainer.save_model()
    for folder in (tmp_path / "out", tmp_path / "out" / "checkpoint-1", tmp_path / "out" / "checkpoint-2"):
        assert RevisionTemplate.load(folder) == RevisionTemplate(TEMPLATE)
    assert json.loads((tmp_path / "out" / "revision_template.json").read_text()) == {"text": TEMPLATE}

    again = _trainer(tiny_model_dir, tmp_path)
    assert again.reference_forward_batches == 0  # all six reference log-probs come from the cache


def test_loss_equals_the_pure_loss_on_an_independent_forward(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path)
    batch = _batch(trainer)
    with torch.no_grad():
        policy = _independent_logps(trainer.model, batch)
        reference = {name: batch[f"ref_{name}_logps"] for name in SRPO_SEQUENCE_NAMES}
        for name in SRPO_SEQUENCE_NAMES:  # before any step the policy is the reference
            assert torch.allclose(reference[name], policy[name], atol=1e-5), name
        expected, _, _ = srpo_loss(policy, reference, 0.5, 0.8)
        assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(expected.item(), abs=1e-5)


def test_batch_blocks_hold_each_completion_after_each_revision_prompt(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path)
    tokenizer, row, batch = trainer.processing_class, trainer.train_dataset[0], _batch(trainer)
    template = RevisionTemplate(TEMPLATE)
    for index, name in enumerate(SRPO_SEQUENCE_NAMES):
        completion, _, draft = name.partition("_given_")
        prompt = (template.prompt_ids(tokenizer, row["prompt"], row[draft][0]["content"]) if draft
                  else row["prompt_ids"])
        ids = batch["input_ids"][index * BATCH][batch["attention_mask"][index * BATCH].bool()].tolist()
        assert ids == prompt + row[f"{completion}_ids"], name


def test_pr1772_fault_precomputed_reference_is_used_whatever_alpha(tiny_model_dir, tmp_path):
    """The pull request read the precomputed reference log-probs only when `rpo_alpha` was set."""
    for alpha in (0.0, 0.8, 1.0):
        trainer = _trainer(tiny_model_dir, tmp_path, alpha=alpha)
        batch = _batch(trainer)
        planted = {name: torch.full((BATCH,), -float(i + 1)) for i, name in enumerate(SRPO_SEQUENCE_NAMES)}
        batch.update({f"ref_{name}_logps": values for name, values in planted.items()})
        assert trainer.reference_logps(batch) == planted


def test_pr1772_fault_logps_chosen_logs_the_chosen(tiny_model_dir, tmp_path):
    """The pull request logged the rejected log-probs as `logps/chosen`."""
    trainer = _trainer(tiny_model_dir, tmp_path)
    batch = _batch(trainer)
    with torch.no_grad():  # the model is in eval mode: metrics go to the "eval" list
        policy = _independent_logps(trainer.model, batch)
        trainer.compute_loss(trainer.model, batch)
    for name in ("chosen", "rejected", "chosen_given_chosen"):
        assert trainer._metrics["eval"][f"logps/{name}"][-1] == pytest.approx(policy[name].mean().item(), abs=1e-4)
    assert policy["chosen"].mean().item() != pytest.approx(policy["rejected"].mean().item(), abs=1e-3)


def test_pr1772_fault_truncation_never_cuts_the_template(tiny_model_dir, tmp_path):
    """The pull request truncated after inserting the template. Here the draft is cut first (its start kept), the
    template never, and the collator never has to cut: every revision sequence fits max_length whole."""
    max_length = 40  # 18 template tokens + 9 completion tokens leave 13 for the prompt and the 8-digit draft
    trainer = _trainer(tiny_model_dir, tmp_path, max_length=max_length)
    _, middle, tail = RevisionTemplate(TEMPLATE).pieces
    cut = 0
    for row in trainer.train_dataset:
        for draft in ("chosen", "rejected"):
            prompt = row[f"revise_{draft}_prompt_ids"]
            assert len(prompt) + max(len(row["chosen_ids"]), len(row["rejected_ids"])) <= max_length
            text = trainer.processing_class.decode(prompt)
            start = f"<|bos|><|user|>{row['prompt'][0]['content']}{middle}"
            assert text.startswith(start) and text.endswith(f"{tail}<|assistant|>")
            kept = text[len(start):-len(f"{tail}<|assistant|>")]
            full = row[draft][0]["content"]
            assert full.startswith(kept)
            cut += len(kept) < len(full)
    assert cut > 0
    batch = _batch(trainer)
    assert int(batch["completion_mask"].sum()) == sum(  # every completion token survives the collator
        len(trainer.train_dataset[i][f"{name.partition('_given_')[0]}_ids"])
        for name in SRPO_SEQUENCE_NAMES for i in range(BATCH))


def test_pairs_without_room_for_the_template_are_dropped_and_none_left_is_an_error(tiny_model_dir, tmp_path, capsys):
    from datasets import Dataset

    from posttrain.errors import UsageError

    rows = load_any_dataset("pg:sort8/preference", "train", num_examples=ROWS).to_list()
    rows[3]["chosen"] = [{"role": "assistant", "content": "0123456789" * 5}]  # leaves no room for the template
    trainer = _trainer(tiny_model_dir, tmp_path, data=Dataset.from_list(rows))
    assert len(trainer.train_dataset) == ROWS - 1
    assert f"dropped 1 of {ROWS} train pairs" in capsys.readouterr().out
    with pytest.raises(UsageError, match="no train example leaves room for the revision template"):
        _trainer(tiny_model_dir, tmp_path, max_length=20)


@pytest.mark.parametrize(("settings", "message"), [
    ({"revision_template": "{prompt} only"}, r"revision_template must contain \{draft\} exactly once"),
    ({"revision_template": "{draft} then {prompt}"}, r"must place \{prompt\} before \{draft\}"),
    ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
    ({"loss_type": ["ipo"]}, r"loss_type must be \[sigmoid\]"),
])
def test_srpo_config_rejects_bad_settings(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        SRPOConfig(output_dir=str(tmp_path), **CPU_SETTINGS, **settings)
