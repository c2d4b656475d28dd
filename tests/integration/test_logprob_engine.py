"""The sequence log-prob engine (one forward over N named sequences) and the N-way frozen-model log-prob cache."""

from __future__ import annotations

import pytest
import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference

from posttrain.data import load_any_dataset
from posttrain.models import load_causal_lm, load_tokenizer
from posttrain.trainers.dpo import DPOConfig, DPOTrainer
from posttrain.trainers.logprobs import PAIR, Sequence, SequenceCollator, sequence_logps

from ..conftest import CPU_SETTINGS

ROWS = 8
# Six sequences over the tokenized pair columns, with three different "prompts" (as SRPO's six use two revision
# prompts beside the plain one): enough to check the layout, the one forward and the cache for N > 2.
SIX = (*PAIR, Sequence("chosen_after_rejected", "rejected_ids", "chosen_ids"),
       Sequence("rejected_after_rejected", "rejected_ids", "rejected_ids"),
       Sequence("chosen_after_chosen", "chosen_ids", "chosen_ids"),
       Sequence("rejected_after_chosen", "chosen_ids", "rejected_ids"))


class SixWayTrainer(DPOTrainer):
    sequences = SIX


def _trainer(model_dir, tmp_path, trainer_class=DPOTrainer, **config):
    config = {"ref_logps_cache_dir": str(tmp_path / "cache"), **config}
    args = DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_length=64, seed=0,
                     **CPU_SETTINGS, **config)
    data = load_any_dataset("pg:sort8/preference", "train", num_examples=ROWS)
    return trainer_class(model=load_causal_lm(str(model_dir)), args=args, train_dataset=data,
                         processing_class=load_tokenizer(str(model_dir)))


def _alone(model, prompt: list[int], completion: list[int]) -> float:
    """Summed completion log-prob of one unpadded sequence, from a plain forward with no posttrain code."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return token_logps[len(prompt) - 1:].sum().item()


@pytest.mark.parametrize("max_length,mode", [(None, "keep_start"), (20, "keep_start"), (20, "keep_end")])
def test_pair_collator_equals_trls_preference_collator(tiny_model_dir, tmp_path, max_length, mode):
    examples = [_trainer(tiny_model_dir, tmp_path).train_dataset[i] for i in range(3)]
    ours = SequenceCollator(0, PAIR, max_length, mode, pad_to_multiple_of=8)(examples)
    theirs = DataCollatorForPreference(0, max_length, mode, pad_to_multiple_of=8)(examples)
    assert set(ours) == set(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


def test_one_forward_over_six_sequences_equals_each_scored_alone(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, SixWayTrainer, precompute_ref_log_probs=False)
    examples = [trainer.train_dataset[i] for i in range(3)]
    batch = trainer.data_collator(examples)
    assert batch["input_ids"].size(0) == 6 * 3  # six name blocks of three rows
    with torch.no_grad():
        scored = sequence_logps(trainer.model, batch, [s.name for s in SIX])
    plain = load_causal_lm(str(tiny_model_dir))
    for sequence in SIX:
        expected = [_alone(plain, e[sequence.prompt], e[sequence.completion]) for e in examples]
        assert scored.logps[sequence.name].tolist() == pytest.approx(expected, abs=1e-4), sequence.name
        mask = scored.masks[sequence.name]
        assert mask.sum(dim=1).tolist() == [len(e[sequence.completion]) for e in examples]
        assert torch.equal(scored.token_logps[sequence.name] * mask, scored.token_logps[sequence.name])


def test_six_way_cache_stores_every_sequence_and_is_reused(tiny_model_dir, tmp_path, capsys):
    first = _trainer(tiny_model_dir, tmp_path, SixWayTrainer)
    assert first.reference_forward_batches == ROWS // 4
    columns = [f"ref_{s.name}_logps" for s in SIX]
    assert set(columns) <= set(first.train_dataset.column_names)
    plain = load_causal_lm(str(tiny_model_dir))
    row = first.train_dataset[0]
    for sequence in SIX:  # before training the reference is the policy: the cached values are its log-probs
        expected = _alone(plain, row[sequence.prompt], row[sequence.completion])
        assert row[f"ref_{sequence.name}_logps"] == pytest.approx(expected, abs=1e-4)
    second = _trainer(tiny_model_dir, tmp_path, SixWayTrainer)
    assert second.reference_forward_batches == 0 and "loaded from cache" in capsys.readouterr().out
    assert [second.train_dataset[c] for c in columns] == [first.train_dataset[c] for c in columns]
    # Another set of sequence names on the same data and model is another entry: the key holds the names.
    two_way = _trainer(tiny_model_dir, tmp_path)
    assert two_way.reference_forward_batches == ROWS // 4
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    assert two_way.train_dataset["ref_chosen_logps"] == first.train_dataset["ref_chosen_logps"]


def test_a_second_model_from_a_path_gives_its_own_columns_and_cache_entry(tiny_model_dir, tmp_path):
    from posttrain.data import tokenizer_corpus
    from posttrain.models import make_tiny_model

    trainer = _trainer(tiny_model_dir, tmp_path)
    other_dir = make_tiny_model(tmp_path / "other", tokenizer_corpus(), seed=3)
    scored = trainer.add_logps_columns(trainer.train_dataset, "prev", model=trainer.load_scoring_model(str(other_dir)))
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2  # reference + the other model
    other, row = load_causal_lm(str(other_dir)), scored[0]
    assert row["prev_chosen_logps"] == pytest.approx(_alone(other, row["prompt_ids"], row["chosen_ids"]), abs=1e-4)
    assert row["prev_chosen_logps"] != pytest.approx(row["ref_chosen_logps"], abs=1e-3)
    before = trainer.reference_forward_batches
    again = trainer.add_logps_columns(trainer.train_dataset, "prev", model=trainer.load_scoring_model(str(other_dir)))
    assert trainer.reference_forward_batches == before and again["prev_chosen_logps"] == scored["prev_chosen_logps"]


def test_trl_only_variants_fall_back_to_trls_loss_on_the_engines_batches(tiny_model_dir, tmp_path):
    """`loss_type: [ipo]` is TRL's loss: posttrain's DPOTrainer must hand the same batch layout to it."""
    import trl

    ours = _trainer(tiny_model_dir, tmp_path, loss_type=["ipo"])
    assert not ours.engine_loss
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, max_length=64, seed=0,
                         loss_type=["ipo"], **CPU_SETTINGS)
    theirs = trl.DPOTrainer(model=load_causal_lm(str(tiny_model_dir)), args=args,
                            train_dataset=load_any_dataset("pg:sort8/preference", "train", num_examples=ROWS),
                            processing_class=load_tokenizer(str(tiny_model_dir)))
    losses = []
    for trainer in (ours, theirs):
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, batch).item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_without_a_disk_cache_the_reference_is_scored_and_nothing_is_written(tiny_model_dir, tmp_path, monkeypatch):
    """`ref_logps_cache_dir: ""` turns the disk cache off: the columns come from a forward, no file, no key (which
    would hash the weights and the data)."""
    from posttrain.trainers import ref_cache

    monkeypatch.setattr(ref_cache, "cache_key", lambda *a, **k: pytest.fail("computed a cache key"))
    trainer = _trainer(tiny_model_dir, tmp_path, ref_logps_cache_dir="")
    assert trainer.reference_forward_batches == ROWS // 4 and not (tmp_path / "cache").exists()
    monkeypatch.undo()
    cached = _trainer(tiny_model_dir, tmp_path / "with-cache")
    assert trainer.train_dataset["ref_chosen_logps"] == cached.train_dataset["ref_chosen_logps"]
