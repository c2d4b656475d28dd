"""`posttrain export <source> --output <dir>`: turn a training output into a plain Hugging Face checkpoint.

Two kinds of training output are not directly loadable as a full model:

- a PEFT LoRA adapter (`adapter_config.json`, written by `use_peft: true`): `--merge-lora` loads its base model
  (unquantised, also for a QLoRA adapter), folds the adapter in with PEFT's `merge_and_unload` and saves the result.
  vLLM can also serve the adapter unmerged (`VLLMGenerator(base, adapter=<dir>)`).
- a DeepSpeed ZeRO checkpoint (`latest` + `global_step*/`, with no full weights: ZeRO-3 with
  `zero3_save_16bit_model: false`): DeepSpeed's own `zero_to_fp32` gathers the fp32 master weights, which are
  loaded into the architecture of the folder's `config.json`. DeepSpeed's checkpoint files are pickles: export only
  checkpoints you trust.

The result is written to `<output>.partial` and renamed to `<output>` once complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from posttrain.errors import OneLineArgumentParser, UsageError
from posttrain.io import remove_path, replace_dir, restore_umask_modes

DTYPES = ("auto", "float32", "bfloat16", "float16")
FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "vocab.json")


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(prog="posttrain export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a run directory or one of its checkpoint-* folders")
    parser.add_argument("--output", required=True, help="folder for the plain Hugging Face checkpoint")
    parser.add_argument("--merge-lora", "--merge_lora", dest="merge_lora", action="store_true",
                        help="merge a LoRA adapter into its base model")
    parser.add_argument("--base_model", "--base-model", dest="base_model", default=None,
                        help="base model of the adapter (default: base_model_name_or_path in adapter_config.json)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="dtype of the written weights (auto: the base model's, or config.json's for ZeRO)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow custom model code (off by default)")
    return parser


def source_kind(source: Path) -> str:
    """'adapter', 'zero' or 'hf' for a folder holding a PEFT adapter, a ZeRO checkpoint or full HF weights."""
    if not source.exists():
        raise UsageError(f"export source {str(source)!r} does not exist; pass a run directory or a checkpoint folder")
    if not source.is_dir():
        raise UsageError(f"export source {str(source)!r} is a file; pass a run directory or a checkpoint folder")
    if (source / "adapter_config.json").is_file():
        return "adapter"
    if any((source / name).is_file() for name in FULL_WEIGHTS):
        return "hf"
    if (source / "latest").is_file() or any(source.glob("global_step*")):
        return "zero"
    checkpoints = sorted(p.name for p in source.glob("checkpoint-*") if p.is_dir())
    hint = f" (it has {', '.join(checkpoints)}: pass one of those)" if checkpoints else ""
    raise UsageError(f"{str(source)!r} holds no model: no adapter_config.json, no model weights and no DeepSpeed "
                     f"checkpoint (latest, global_step*){hint}; pass a run directory or a checkpoint folder")


def _torch_dtype(name: str, default):
    import torch

    return default if name == "auto" else getattr(torch, name)


def _staging_dir(source: Path, output: Path, overwrite: bool) -> Path:
    if output.resolve() == source.resolve() or source.resolve().is_relative_to(output.resolve()):
        raise UsageError(f"--output {str(output)!r} would replace the source; choose another folder")
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise UsageError(f"--output {str(output)!r} already exists and is not empty; pass --overwrite or choose "
                         f"another folder")
    staging = output.with_name(output.name + ".partial")
    remove_path(staging)  # left behind by an interrupted export
    return staging


def _save_tokenizer(candidates: list[str], staging: Path, trust_remote_code: bool) -> str | None:
    """Save the first candidate folder's tokenizer unchanged (no pad-token defaults); None when none has one."""
    from transformers import AutoTokenizer

    for candidate in candidates:
        path = Path(candidate)
        if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
            continue
        try:
            tokenizer = AutoTokenizer.from_pretrained(candidate, trust_remote_code=trust_remote_code)
        except (OSError, ValueError):
            continue
        tokenizer.save_pretrained(staging)
        return candidate
    return None


def _read_adapter_config(source: Path) -> dict:
    try:
        config = json.loads((source / "adapter_config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{source / 'adapter_config.json'} is not valid JSON ({err}); re-save the adapter") from None
    if config.get("peft_type") != "LORA":
        raise UsageError(f"adapter {str(source)!r} is a {config.get('peft_type')} adapter; only LoRA adapters can be "
                         f"merged")
    return config


def merge_lora(source: Path, staging: Path, base_model: str | None, dtype: str, trust_remote_code: bool) -> str:
    """Base + adapter -> merged full model saved in `staging`. Returns the base model used."""
    from peft import PeftModel

    from posttrain.models import load_causal_lm

    adapter_config = _read_adapter_config(source)
    base = base_model or adapter_config.get("base_model_name_or_path")
    if not base:
        raise UsageError(f"adapter_config.json in {str(source)!r} names no base model; pass --base_model")
    try:
        model = load_causal_lm(base, trust_remote_code=trust_remote_code, dtype=dtype)
    except UsageError as err:
        raise UsageError(f"base model of adapter {str(source)!r}: {err} (override it with --base_model)") from None
    merged = PeftModel.from_pretrained(model, str(source)).merge_and_unload()
    merged.save_pretrained(staging)
    return base


def _zero_tag(source: Path) -> str | None:
    """None lets DeepSpeed read `latest`; without that file, the newest global_step folder."""
    if (source / "latest").is_file():
        return None
    steps = [p.name for p in source.glob("global_step*") if p.is_dir() and p.name[len("global_step"):].isdigit()]
    if not steps:
        raise UsageError(f"{str(source)!r} has no 'latest' file and no global_step<N> folder; pass a complete "
                         f"DeepSpeed checkpoint folder")
    return max(steps, key=lambda name: int(name[len("global_step"):]))


def convert_zero(source: Path, staging: Path, dtype: str, trust_remote_code: bool) -> None:
    """Gather a ZeRO checkpoint's fp32 weights with DeepSpeed and save them as the model of `config.json`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    if not (source / "config.json").is_file():
        raise UsageError(f"DeepSpeed checkpoint {str(source)!r} has no config.json to rebuild the model from; pass "
                         f"the run directory or checkpoint-* folder the trainer wrote")
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError:
        raise UsageError("converting a DeepSpeed checkpoint needs deepspeed: pip install 'posttrain[deepspeed]'"
                         ) from None
    state_dict = get_fp32_state_dict_from_zero_checkpoint(str(source), tag=_zero_tag(source))
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    with torch.device("meta"):  # only to resolve the model class (Auto classes cannot load from a state dict)
        model_class = type(AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code))
    model, info = model_class.from_pretrained(
        None, config=config, state_dict=state_dict, output_loading_info=True,
        dtype=_torch_dtype(dtype, getattr(config, "dtype", None) or torch.float32))
    if info["missing_keys"] or info["unexpected_keys"]:
        raise UsageError(f"the weights in {str(source)!r} do not fit its config.json (missing "
                         f"{sorted(info['missing_keys'])[:3]}, unexpected {sorted(info['unexpected_keys'])[:3]}); "
                         f"export a checkpoint folder whose config.json the same run wrote")
    if (source / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(source)
    model.save_pretrained(staging)


def export(source: str | os.PathLike, output: str | os.PathLike, merge_lora_adapter: bool = False,
           base_model: str | None = None, dtype: str = "auto", overwrite: bool = False,
           trust_remote_code: bool = False) -> Path:
    """Write `source` as a plain HF checkpoint (weights, config, tokenizer) to `output`; return `output`."""
    source, output = Path(source), Path(output)
    kind = source_kind(source)
    if kind == "hf":
        raise UsageError(f"{str(source)!r} is already a plain Hugging Face checkpoint; nothing to export, load or "
                         f"serve it directly")
    if kind == "adapter" and not merge_lora_adapter:
        raise UsageError(f"{str(source)!r} holds a LoRA adapter; pass --merge-lora to write base + adapter as one "
                         f"model, or serve the adapter directly with vLLM (VLLMGenerator(base, adapter=...))")
    if kind == "zero" and (merge_lora_adapter or base_model):
        raise UsageError(f"{str(source)!r} holds a DeepSpeed checkpoint, not a LoRA adapter; drop --merge-lora and "
                         f"--base_model")
    staging = _staging_dir(source, output, overwrite)
    try:
        if kind == "adapter":
            base = merge_lora(source, staging, base_model, dtype, trust_remote_code)
            tokenizer_from = _save_tokenizer([str(source), base], staging, trust_remote_code)
        else:
            convert_zero(source, staging, dtype, trust_remote_code)
            tokenizer_from = _save_tokenizer([str(source)], staging, trust_remote_code)
        restore_umask_modes(staging)  # safetensors writes the weights 0600
        replace_dir(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    what = "merged LoRA model" if kind == "adapter" else "model gathered from the DeepSpeed ZeRO checkpoint"
    tokenizer_note = f"tokenizer from {tokenizer_from}" if tokenizer_from else "no tokenizer found, none written"
    print(f"posttrain: {what} written to {output} ({tokenizer_note})")
    return output


def main(argv: list[str]) -> Path:
    args = build_parser().parse_args(argv)
    return export(args.source, args.output, args.merge_lora, args.base_model, args.dtype, args.overwrite,
                  args.trust_remote_code)
