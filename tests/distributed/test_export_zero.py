"""`posttrain export` of a real DeepSpeed ZeRO-3 checkpoint (one process on CPU, through `accelerate launch`).

With `zero3_save_16bit_model: true` a checkpoint folder holds both the ZeRO partitions (`latest`, `global_step*/`)
and the weights DeepSpeed gathered at save time (`model.safetensors`). Without that file (what
`zero3_save_16bit_model: false` writes) export must rebuild exactly those weights from the partitions.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from posttrain.errors import UsageError
from posttrain.export import main as export_main

from .launching import REPO, TRAIN, launch

pytestmark = pytest.mark.distributed


def _train_one_process_zero3(model_dir, output_dir) -> None:
    launch(TRAIN, "--config", str(REPO / "recipes" / "sft" / "sort8_tiny_cpu.yaml"),
           "--model_name_or_path", str(model_dir), "--output_dir", str(output_dir), "--max_steps", "2",
           "--save_steps", "2", "--logging_steps", "1", "--dataset_num_examples", "16",
           "--per_device_train_batch_size", "8", "--eval_task", "", "--build_tiny_model_if_missing", "false",
           num_processes=1)


def test_export_rebuilds_the_weights_deepspeed_gathered_from_a_zero3_checkpoint(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    _train_one_process_zero3(tiny_model_dir, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert (checkpoint / "latest").is_file() and (checkpoint / "global_step2").is_dir()
    with pytest.raises(UsageError, match="already a plain Hugging Face checkpoint"):
        export_main([str(checkpoint), "--output", str(tmp_path / "unused")])

    zero_only = tmp_path / "zero-only"
    shutil.copytree(checkpoint, zero_only, ignore=shutil.ignore_patterns("model.safetensors"))
    exported = export_main([str(zero_only), "--output", str(tmp_path / "hf")])

    rebuilt, gathered = load_file(exported / "model.safetensors"), load_file(checkpoint / "model.safetensors")
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert set(rebuilt) == set(gathered) == set(initial)
    assert all(torch.equal(rebuilt[name], gathered[name]) for name in gathered)
    assert any(not torch.equal(rebuilt[name], initial[name]) for name in initial)  # two steps were trained
    assert {"config.json", "tokenizer_config.json"} <= {p.name for p in exported.iterdir()}
    assert not any(exported.glob("global_step*")) and not (exported / "latest").exists()
    model = AutoModelForCausalLM.from_pretrained(exported)
    assert torch.equal(model.get_input_embeddings().weight, rebuilt["model.embed_tokens.weight"])
