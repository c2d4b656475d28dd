"""Discoverable recipe keys: the usage of `posttrain train --help`, every key of a method with its real default
(`posttrain train --method M --help`, `posttrain recipe M`), and a commented starter recipe (`--template`)."""

from __future__ import annotations

import dataclasses
import re
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from posttrain.errors import UsageError
from posttrain.recipe import PLACEHOLDER, REQUIRED_KEYS, RunArguments, cli_value, read_recipe_file, split_config_flag
from posttrain.registry import METHODS, Method, get_method

HELP_FLAGS = ("-h", "--help")
HELP_CHARS = 70  # a key's help is cut to its first sentence and at most this many characters
_SENTENCE_END = re.compile(r"(?<!e\.g\.)(?<!i\.e\.)(?<=\.)\s+(?=[A-Z`])")

# What the template says about each required key (their dataclass help is long or generic).
REQUIRED_NOTES = {
    "model_name_or_path": "a local model folder or a hub id",
    "dataset_name": "pg:<task>/<kind>, a local .jsonl/.json/.csv/.parquet file or folder, or a hub id",
    "output_dir": "the run folder (rerunning the same command resumes it)",
}
# Keys most recipes set, shown commented in the template beside the method's own keys.
COMMON_TRAINING_KEYS = ("num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                        "learning_rate", "lr_scheduler_type", "warmup_steps", "max_length", "logging_steps",
                        "save_strategy", "save_steps", "save_total_limit", "seed", "bf16", "gradient_checkpointing",
                        "use_cpu")
# TRL keys worth a line in a starter recipe (the method's own posttrain keys are always shown).
COMMON_METHOD_KEYS = ("beta", "loss_type", "label_smoothing", "truncation_mode", "packing", "completion_only_loss",
                      "assistant_only_loss")
COMMON_MODEL_KEYS = ("dtype", "attn_implementation", "use_peft", "lora_r", "lora_alpha", "lora_dropout",
                     "lora_target_modules", "load_in_4bit")
CPU_KEYS = {"use_cpu": True, "bf16": False}  # what a machine without a CUDA GPU needs (TRL defaults bf16 on)


def wants_help(argv: list[str]) -> bool:
    return any(token in HELP_FLAGS for token in argv)


def train_help(argv: list[str]) -> str:
    """What `posttrain train ... --help` prints: every key of the method that --method or the recipe names,
    else the general usage."""
    config, rest = split_config_flag([token for token in argv if token not in HELP_FLAGS])
    name = cli_value(rest, "method") or (read_recipe_file(config).get("method") if config else None)
    return method_keys(get_method(str(name))) if name else train_usage()


def train_usage() -> str:
    width = max(map(len, METHODS))
    methods = [f"  {m.name:<{width}}  {m.summary}" for m in METHODS.values()]
    return "\n".join([
        "usage: posttrain train --config <recipe.yaml> [--key value ...]",
        "       posttrain train --method <name> --model_name_or_path M --dataset_name D --output_dir O [...]",
        "",
        "Train one recipe: a flat YAML file whose keys are the fields of the method's configs. A --key value on",
        "the command line overrides the file's value. Rerunning the same command resumes the run.",
        "",
        "options:",
        "  --config FILE   the recipe YAML",
        "  --method NAME   the method (overrides the recipe's method key)",
        "  -h, --help      this help; with --method or --config: every key of that method",
        "",
        "methods:",
        *methods,
        "",
        "Every key of a method, with its default and help:  posttrain train --method dpo --help",
        "                                               or:  posttrain recipe dpo",
        "A commented starter recipe:  posttrain recipe dpo --template --output my_dpo.yaml",
    ])


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return None
    return value.value if isinstance(value, Enum) else value


def yaml_value(value: Any) -> str:
    """`value` as it would be written in a recipe."""
    try:
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).removesuffix("\n...\n").strip()
    except yaml.YAMLError:
        return str(value)


def short_help(field: dataclasses.Field, limit: int = HELP_CHARS) -> str:
    text = " ".join(str(field.metadata.get("help", "")).split())
    text = _SENTENCE_END.split(text, maxsplit=1)[0]
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def _declaring_class(cls: type, name: str) -> type:
    return next(c for c in cls.__mro__ if name in vars(c).get("__annotations__", {}))


def key_groups(method: Method) -> list[tuple[type, list[dataclasses.Field]]]:
    """(declaring class, its fields) in parse order: the run fields, the method's config classes from most to least
    specific (a field redeclared to change its default counts for the subclass), then TRL's ModelConfig."""
    from trl import ModelConfig

    groups: dict[type, list[dataclasses.Field]] = {}
    for cls in (RunArguments, method.config_class, ModelConfig):
        for owner in cls.__mro__:  # most specific first
            fields = [f for f in dataclasses.fields(cls) if f.init and _declaring_class(cls, f.name) is owner]
            if fields:
                groups[owner] = fields
    return list(groups.items())


def _title(cls: type) -> str:
    return f"{cls.__module__.split('.')[0]} {cls.__qualname__}"


def method_keys(method: Method) -> str:
    """Every recipe key of `method`: one line each with its real (dataclass) default and its help."""
    lines = [f"posttrain train --method {method.name}: {method.summary}",
             "Recipe keys (YAML `key: value`, or `--key value` on the command line) with their defaults.",
             f"Required: {', '.join(REQUIRED_KEYS)}.",
             f"A commented starter recipe: posttrain recipe {method.name} --template --output my_{method.name}.yaml"]
    for owner, fields in key_groups(method):
        lines += ["", f"{_title(owner)}:"]
        for field in fields:
            default = "(required)" if field.name in REQUIRED_KEYS else yaml_value(_default(field))
            if len(default) > 16:
                default = default[:13] + "..."
            lines.append(f"  {field.name:<30} {default:<16} {short_help(field)}".rstrip())
    return "\n".join(lines)


def _commented(field: dataclasses.Field) -> str:
    return f"# {field.name}: {yaml_value(_default(field))}  # {short_help(field)}".rstrip(" #")


def template(method: Method, cpu_only: bool) -> str:
    """A starter recipe: the required keys with placeholders, common keys commented with their defaults. With
    `cpu_only`, the settings a machine without a CUDA GPU needs are set."""
    fields = {f.name: (owner, f) for owner, group in key_groups(method) for f in group}
    own = [name for name, (owner, _) in fields.items() if owner.__module__.startswith("posttrain.trainers")]
    sections = [("Data and evaluation", [n for n, (owner, _) in fields.items() if owner is RunArguments]),
                (f"{method.name} settings", [*own, *COMMON_METHOD_KEYS]), ("Training", COMMON_TRAINING_KEYS),
                ("Model and LoRA", COMMON_MODEL_KEYS)]
    lines = [f"# Starter recipe for {method.name}: {method.summary}.",
             f"# Replace each {PLACEHOLDER!r}, then run: posttrain train --config <this file>",
             f"# Commented keys show their defaults. Every key with its help: posttrain recipe {method.name}",
             "", f"method: {method.name}"]
    lines += [f"{key}: {yaml_value(PLACEHOLDER)}  # {note}" for key, note in REQUIRED_NOTES.items()]
    if cpu_only:
        lines += ["", "# No CUDA GPU was visible when this file was written; delete these two lines on a GPU machine."]
        lines += [f"{key}: {yaml_value(value)}" for key, value in CPU_KEYS.items()]
    shown = {*REQUIRED_KEYS, *(CPU_KEYS if cpu_only else ())}  # keys already set above
    for title, names in sections:
        names = [name for name in dict.fromkeys(names) if name in fields and name not in shown]
        shown.update(names)
        lines += ["", f"# --- {title} ---", *(_commented(fields[name][1]) for name in names)]
    return "\n".join(lines) + "\n"


def starter_recipe(method: Method) -> str:
    """The template for this machine: CPU settings set when no CUDA GPU is visible."""
    import torch

    return template(method, cpu_only=not torch.cuda.is_available())


def write_new_file(path: str, text: str) -> None:
    """Write `text` to `path` atomically; an existing file is never overwritten."""
    from posttrain.io import atomic_write_text

    if Path(path).exists():
        raise UsageError(f"{path!r} already exists; choose another --output or delete it first")
    atomic_write_text(path, text)
