"""A LoRA run's report.md says how it trained: LoRA with its rank, alpha and targets, precision and topology."""

from __future__ import annotations

from posttrain.train import train

from .test_lora import _lora_recipe


def test_lora_run_report_states_lora_rank_precision_and_topology(tiny_model_dir, tmp_path, write_recipe):
    run_dir = train(_lora_recipe(write_recipe, tiny_model_dir, "sft", tmp_path / "run", max_steps=1))
    text = (run_dir / "report.md").read_text()
    assert "## Run setup" in text
    assert "| fine-tuning | LoRA adapter: rank 4, alpha 8, dropout 0.0, target modules all-linear |" in text
    assert "| precision | fp32; weights loaded as float32 |" in text
    assert "| topology | 1 process with no DeepSpeed |" in text
