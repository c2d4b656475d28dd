"""Every file of a tiny model, a run folder (checkpoints, report, plots, eval, weights), the reference cache and a
merged export gets the umask's mode: readable by the group under umask 022, private under 077."""

from __future__ import annotations

import os

import pytest

from posttrain.data import tokenizer_corpus
from posttrain.export import main as export_main
from posttrain.models import make_tiny_model
from posttrain.recipe import parse_recipe
from posttrain.train import train

from ..conftest import CPU_SETTINGS
from .test_lora import LORA


@pytest.fixture(params=[(0o022, 0o644), (0o077, 0o600)], ids=["umask-022", "umask-077"])
def expected_mode(request):
    mask, mode = request.param
    old = os.umask(mask)
    try:
        yield mode
    finally:
        os.umask(old)


def _recipe(write_recipe, model_dir, output_dir, method, **extra):
    dataset = "pg:sort8/sft" if method == "sft" else "pg:sort8/preference"
    values = {"method": method, "model_name_or_path": str(model_dir), "dataset_name": dataset,
              "dataset_num_examples": 8, "output_dir": str(output_dir), "per_device_train_batch_size": 4,
              "max_steps": 2, "logging_steps": 1, "save_strategy": "steps", "save_steps": 1, "max_length": 64,
              "seed": 0, **CPU_SETTINGS, **extra}
    return parse_recipe(["--config", write_recipe(values, f"{output_dir.name}.yaml")])


def _modes(folder) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mode & 0o777 for path in folder.rglob("*")
            if path.is_file()}


def test_every_output_file_gets_the_umask_mode(expected_mode, tmp_path, write_recipe):
    model_dir = make_tiny_model(tmp_path / "tiny", tokenizer_corpus())
    full = train(_recipe(write_recipe, model_dir, tmp_path / "full", "dpo", eval_task="sort8", eval_num_examples=2,
                         ref_logps_cache_dir=str(tmp_path / "cache")))
    lora = train(_recipe(write_recipe, model_dir, tmp_path / "lora", "sft", save_strategy="no", max_steps=1, **LORA))
    merged = export_main([str(lora), "--output", str(tmp_path / "merged"), "--merge-lora"])

    files = {name: _modes(folder) for name, folder in
             [("model", model_dir), ("full", full), ("lora", lora), ("merged", merged), ("cache", tmp_path / "cache")]}
    expected_files = {("full", "model.safetensors"), ("full", "report.md"), ("full", "recipe.yaml"),
                      ("full", "run_config.json"), ("full", "eval.json"), ("full", "loss.png"),
                      ("full", "checkpoint-1/model.safetensors"), ("full", "checkpoint-1/posttrain_topology.json"),
                      ("lora", "adapter_model.safetensors"), ("merged", "model.safetensors"),
                      ("model", "model.safetensors")}
    assert expected_files <= {(name, file) for name, modes in files.items() for file in modes}
    assert files["cache"]
    wrong = {f"{name}/{file}": oct(mode) for name, modes in files.items() for file, mode in modes.items()
             if mode != expected_mode}
    assert not wrong
