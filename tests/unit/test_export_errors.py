"""`posttrain export` refuses bad input with one line that names the problem and the fix, and writes nothing."""

from __future__ import annotations

import json

import pytest

from posttrain.errors import UsageError
from posttrain.export import main as export_main


def _error(argv: list[str]) -> str:
    with pytest.raises(UsageError) as error:
        export_main([str(arg) for arg in argv])
    message = str(error.value)
    assert "\n" not in message
    return message


def _adapter(folder, base_model="/nonexistent/base-model", peft_type="LORA"):
    """An adapter folder as far as export's checks read it: adapter_config.json only."""
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type, "r": 4,
                                                            "base_model_name_or_path": base_model}))
    return folder


def test_missing_source(tmp_path):
    assert "does not exist; pass a run directory or a checkpoint folder" in _error(
        [tmp_path / "nope", "--output", tmp_path / "out"])


def test_a_file_is_not_a_source(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert "is a file; pass a run directory" in _error([tmp_path / "notes.txt", "--output", tmp_path / "out"])


def test_folder_without_a_model_names_its_checkpoints(tmp_path):
    (tmp_path / "run" / "checkpoint-4").mkdir(parents=True)
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    message = _error([tmp_path / "run", "--output", tmp_path / "out"])
    assert "holds no model" in message and "checkpoint-4: pass one of those" in message
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_adapter_without_merge_lora_says_to_merge_or_serve_it(tmp_path):
    message = _error([_adapter(tmp_path / "run"), "--output", tmp_path / "out"])
    assert "holds a LoRA adapter; pass --merge-lora" in message and "vLLM" in message


def test_plain_checkpoint_needs_no_export(tiny_model_dir, tmp_path):
    message = _error([tiny_model_dir, "--output", tmp_path / "out"])
    assert "already a plain Hugging Face checkpoint; nothing to export" in message
    assert not (tmp_path / "out").exists()


def test_non_empty_output_needs_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    message = _error([_adapter(tmp_path / "run"), "--output", tmp_path / "out", "--merge-lora"])
    assert "already exists and is not empty; pass --overwrite" in message
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_output_may_not_replace_the_source(tmp_path):
    source = _adapter(tmp_path / "run")
    assert "would replace the source" in _error([source, "--output", source, "--merge-lora", "--overwrite"])
    assert "would replace the source" in _error([source, "--output", tmp_path, "--merge-lora", "--overwrite"])
    assert (source / "adapter_config.json").exists()


def test_missing_base_model_points_to_base_model_flag(tmp_path):
    message = _error([_adapter(tmp_path / "run"), "--output", tmp_path / "out", "--merge-lora"])
    assert "base model of adapter" in message and "/nonexistent/base-model" in message
    assert "--base_model" in message and not (tmp_path / "out.partial").exists()


def test_only_lora_adapters_merge(tmp_path):
    source = _adapter(tmp_path / "run", peft_type="PROMPT_TUNING")
    assert "PROMPT_TUNING adapter; only LoRA adapters can be merged" in _error(
        [source, "--output", tmp_path / "out", "--merge-lora"])


def test_unreadable_adapter_config(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "adapter_config.json").write_text("{not json")
    assert "adapter_config.json is not valid JSON" in _error([tmp_path / "run", "--output", tmp_path / "out",
                                                              "--merge-lora"])


def test_zero_checkpoint_without_config_or_with_lora_flags(tmp_path):
    source = tmp_path / "checkpoint-2"
    (source / "global_step2").mkdir(parents=True)
    (source / "latest").write_text("global_step2")
    assert "not a LoRA adapter; drop --merge-lora" in _error([source, "--output", tmp_path / "out", "--merge-lora"])
    assert "has no config.json to rebuild the model from" in _error([source, "--output", tmp_path / "out"])


def test_bad_flag_is_one_line(tmp_path):
    assert "posttrain export: argument --dtype: invalid choice: 'int8'" in _error(
        [tmp_path, "--output", tmp_path / "out", "--dtype", "int8"])
    assert "the following arguments are required: --output" in _error([tmp_path])
