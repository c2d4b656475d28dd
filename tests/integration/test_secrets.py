"""Tokens from the environment or the recipe never reach a run folder (any file, binary too) or the console."""

from __future__ import annotations

from posttrain.recipe import parse_recipe
from posttrain.train import train

from ..conftest import CPU_SETTINGS

ENV_TOKENS = {"HF_TOKEN": "hf_EnvTokenNeverWritten1234567890", "OPENAI_API_KEY": "sk-EnvKeyNeverWritten1234567890"}
RECIPE_TOKEN = "hf_RecipeTokenNeverWritten123456789"


def _files_holding(folder, secrets) -> dict[str, list[str]]:
    """{file: secrets found in its bytes} for every file under `folder` (pickles and tensors too)."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits = [s for s in secrets if s.encode() in data or s.encode("utf-16-le") in data]
            if hits:
                found[str(path.relative_to(folder))] = hits
    return found


def test_tokens_reach_no_run_file_and_no_console_line(tiny_model_dir, tmp_path, write_recipe, monkeypatch, capfd):
    for name, value in ENV_TOKENS.items():
        monkeypatch.setenv(name, value)
    values = {"method": "dpo", "model_name_or_path": str(tiny_model_dir), "dataset_name": "pg:sort8/preference",
              "dataset_num_examples": 8, "output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 4,
              "max_steps": 2, "logging_steps": 1, "save_strategy": "steps", "save_steps": 1, "max_length": 64,
              "seed": 0, "hub_token": RECIPE_TOKEN, "ref_logps_cache_dir": str(tmp_path / "cache"),
              **CPU_SETTINGS, "report_to": "tensorboard"}
    run_dir = train(parse_recipe(["--config", write_recipe(values)]))
    secrets = [*ENV_TOKENS.values(), RECIPE_TOKEN]
    assert list(run_dir.glob("checkpoint-*/training_args.bin")) and (run_dir / "training_args.bin").exists()
    assert _files_holding(run_dir, secrets) == {}
    assert _files_holding(tmp_path / "cache", secrets) == {}
    captured = capfd.readouterr()
    assert not [s for s in secrets if s in captured.out or s in captured.err]
