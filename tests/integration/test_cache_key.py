"""The reference log-prob cache: one entry for LoRA and full fine-tuning of one base, and damaged entries recomputed."""

from __future__ import annotations

import pytest
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from posttrain.trainers.dpo import DPOConfig, DPOTrainer

from .test_rpo import ROWS, _trainer


def _dpo(model_dir, tmp_path, lora: bool = False):
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM") if lora else None
    return _trainer(DPOTrainer, DPOConfig, model_dir, tmp_path, tmp_path / "cache", peft_config=peft_config)


def _entries(tmp_path) -> list:
    return sorted((tmp_path / "cache").glob("*.safetensors"))


def test_lora_and_full_fine_tuning_of_one_base_share_a_cache_entry(tiny_model_dir, tmp_path, capsys):
    lora = _dpo(tiny_model_dir, tmp_path, lora=True)
    assert lora.reference_forward_batches == ROWS // 8
    full = _dpo(tiny_model_dir, tmp_path)
    assert full.reference_forward_batches == 0 and "loaded from cache" in capsys.readouterr().out
    assert len(_entries(tmp_path)) == 1
    assert lora._reference_fingerprint() == full._reference_fingerprint()
    assert full.train_dataset["ref_chosen_logps"] == lora.train_dataset["ref_chosen_logps"]


def test_lora_on_another_base_gets_its_own_entry(tiny_model_dir, tmp_path):
    from posttrain.data import tokenizer_corpus
    from posttrain.models import make_tiny_model

    _dpo(tiny_model_dir, tmp_path, lora=True)
    other = make_tiny_model(tmp_path / "other", tokenizer_corpus(), seed=1)
    assert _dpo(other, tmp_path, lora=True).reference_forward_batches == ROWS // 8
    assert len(_entries(tmp_path)) == 2


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-7])


def _rename_tensors(path):
    save_file({f"other_{name}": values for name, values in load_file(path).items()}, str(path))


def _shorten_tensors(path):
    save_file({name: values[:-1].contiguous() for name, values in load_file(path).items()}, str(path))


@pytest.mark.parametrize("damage", [_truncate, _rename_tensors, _shorten_tensors])
def test_a_damaged_cache_file_is_recomputed_with_a_one_line_note(damage, tiny_model_dir, tmp_path, capsys):
    first = _dpo(tiny_model_dir, tmp_path)
    [entry] = _entries(tmp_path)
    damage(entry)
    capsys.readouterr()
    second = _dpo(tiny_model_dir, tmp_path)
    notes = [line for line in capsys.readouterr().out.splitlines() if "damaged cache file" in line]
    assert len(notes) == 1 and str(entry) in notes[0] and "computing the log-probs again" in notes[0]
    assert second.reference_forward_batches == ROWS // 8
    assert second.train_dataset["ref_chosen_logps"] == first.train_dataset["ref_chosen_logps"]
    assert _dpo(tiny_model_dir, tmp_path).reference_forward_batches == 0  # the entry was replaced by a sound one


def test_a_cache_dir_that_is_a_file_is_a_one_line_usage_error(tiny_model_dir, tmp_path):
    from posttrain.errors import UsageError

    (tmp_path / "cache").write_text("not a folder")
    with pytest.raises(UsageError) as error:
        _dpo(tiny_model_dir, tmp_path)
    message = str(error.value)
    assert f"({tmp_path / 'cache'} is not a folder)" in message and "'' to turn the disk cache off" in message
    assert "\n" not in message and (tmp_path / "cache").read_text() == "not a folder"
