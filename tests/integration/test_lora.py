"""LoRA for every registered method on the tiny model, `posttrain export --merge-lora`, and QLoRA's CPU error."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from posttrain.errors import UsageError
from posttrain.export import main as export_main
from posttrain.models import load_causal_lm, load_tokenizer
from posttrain.recipe import parse_recipe
from posttrain.registry import METHODS
from posttrain.train import build_trainer, train

from ..conftest import CPU_SETTINGS
from .test_train_methods import DATASET_FOR_KIND, METHOD_SETTINGS, length_settings

PREFERENCE_METHODS = sorted(name for name, method in METHODS.items() if method.dataset_kind == "preference")
LORA = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_modules": "all-linear"}
FULL_WEIGHTS = {"model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"}
# Unlearning trains only adapters inside the chosen layers' MLPs: put every adapter there.
LORA_SETTINGS = {"unlearn": {"unlearn_layers": "all", "lora_target_modules": ["gate_proj", "up_proj", "down_proj"]}}


def _lora_recipe(write_recipe, model_dir, method, output_dir, **extra):
    values = {"method": method, "model_name_or_path": str(model_dir),
              "dataset_name": DATASET_FOR_KIND[METHODS[method].dataset_kind], "dataset_num_examples": 16,
              "output_dir": str(output_dir), "per_device_train_batch_size": 8, "max_steps": 2,
              "learning_rate": 1e-2, "logging_steps": 1, "save_strategy": "no", **length_settings(method), "seed": 0,
              **LORA, **CPU_SETTINGS, **METHOD_SETTINGS.get(method, {}), **LORA_SETTINGS.get(method, {}), **extra}
    return parse_recipe(["--config", write_recipe(values, f"{method}.yaml")])


class _KeepModel(TrainerCallback):
    """Holds on to the model the trainer trains (the PEFT-wrapped one)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model


def _base_name(peft_name: str) -> str:
    """`base_model.model.x.q_proj.base_layer.weight` -> `x.q_proj.weight` (the name in the base checkpoint)."""
    return peft_name.removeprefix("base_model.model.").replace(".base_layer", "")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_only_a_lora_adapter(method, tiny_model_dir, tmp_path, write_recipe):
    keep = _KeepModel()
    run_dir = train(_lora_recipe(write_recipe, tiny_model_dir, method, tmp_path / "run", eval_task="sort8",
                                 eval_num_examples=4), callbacks=[keep])
    trainable = {n: p for n, p in keep.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) < 0.1 * sum(p.numel() for p in keep.model.parameters())
    assert any(p.abs().max() > 0 for n, p in trainable.items() if "lora_B" in n)  # B starts at zero: it learned

    initial = load_file(tiny_model_dir / "model.safetensors")
    base = {_base_name(n): p for n, p in keep.model.named_parameters() if not p.requires_grad}
    assert set(initial) <= set(base)
    assert all(torch.equal(base[name].detach().cpu(), initial[name]) for name in initial)

    files = set(os.listdir(run_dir))
    assert {"adapter_config.json", "adapter_model.safetensors", "report.md", "eval.json"} <= files
    assert not files & FULL_WEIGHTS
    assert json.loads((run_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    saved = load_file(run_dir / "adapter_model.safetensors")
    assert all("lora_" in key for key in saved) and len(saved) == len(trainable)


def _completion_logps(model, batch) -> torch.Tensor:
    """Summed completion log-probs from a plain forward pass, one per row of `batch` (chosen rows, then rejected)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (token_logps * batch["completion_mask"][:, 1:]).sum(dim=1)


@pytest.mark.parametrize("method", PREFERENCE_METHODS)
def test_dpo_family_reference_is_the_adapter_disabled_base(method, tiny_model_dir, tmp_path, write_recipe):
    """With a live reference (no precompute) TRL would load a second model; under LoRA it must not."""
    trainer = build_trainer(_lora_recipe(write_recipe, tiny_model_dir, method, tmp_path / "run",
                                         precompute_ref_log_probs=False))
    assert trainer.ref_model is None
    trainer.train()
    trainer.model.eval()
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    reference = torch.cat(trainer.compute_ref_log_probs(trainer.model, batch))
    base = _completion_logps(load_causal_lm(str(tiny_model_dir)).eval(), batch)
    assert torch.allclose(reference, base, atol=1e-5)
    assert not torch.allclose(_completion_logps(trainer.model, batch), base, atol=1e-3)  # the adapter is in use


def test_export_merge_lora_gives_the_adapter_logits_as_a_plain_model(tiny_model_dir, tmp_path, write_recipe):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir = train(_lora_recipe(write_recipe, tiny_model_dir, "sft", tmp_path / "run"))
    merged_dir = export_main([str(run_dir), "--output", str(tmp_path / "merged"), "--merge-lora"])
    assert merged_dir == tmp_path / "merged" and not (tmp_path / "merged.partial").exists()
    files = set(os.listdir(merged_dir))
    assert {"model.safetensors", "config.json", "tokenizer_config.json"} <= files
    assert not {name for name in files if name.startswith("adapter_")}

    tokenizer = load_tokenizer(str(merged_dir))
    assert tokenizer.get_vocab() == load_tokenizer(str(tiny_model_dir)).get_vocab() and tokenizer.chat_template
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "sort 38172049"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    adapted = PeftModel.from_pretrained(load_causal_lm(str(tiny_model_dir)), str(run_dir)).eval()
    base = load_causal_lm(str(tiny_model_dir)).eval()
    with torch.no_grad():
        merged_logits, adapted_logits, base_logits = (m(input_ids=ids).logits for m in (merged, adapted, base))
    assert not torch.allclose(adapted_logits, base_logits, atol=1e-3)  # the trained adapter changes the output
    assert torch.allclose(merged_logits, adapted_logits, atol=1e-5)

    again = export_main([str(run_dir), "--output", str(merged_dir), "--merge-lora", "--dtype", "bfloat16",
                         "--overwrite"])
    assert {t.dtype for t in load_file(again / "model.safetensors").values()} == {torch.bfloat16}


@pytest.mark.parametrize("flag", ["load_in_4bit", "load_in_8bit"])
def test_quantised_loading_on_cpu_is_a_usage_error(flag, tiny_model_dir, tmp_path, write_recipe):
    recipe = _lora_recipe(write_recipe, tiny_model_dir, "sft", tmp_path / "run", **{flag: True})
    with pytest.raises(UsageError) as error:
        train(recipe)
    message = str(error.value)
    assert f"{flag} (QLoRA) needs a CUDA GPU and the bitsandbytes package" in message
    assert "use_cpu: true" in message and f"set {flag} false" in message and "\n" not in message
