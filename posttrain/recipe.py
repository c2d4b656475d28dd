"""Recipes: flat YAML whose keys are exactly the fields of the method's config dataclasses.

Follows TRL's `TrlParser --config` conventions: the YAML sets defaults and `--key value` on the command line
overrides them. Every mistake (unknown key, wrong type, missing field, unknown method, bad file) becomes a
one-line `UsageError` naming the problem and, where one exists, the closest valid key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml

from posttrain.data.loading import not_utf8
from posttrain.errors import UsageError
from posttrain.io import check_output_folder
from posttrain.registry import Method, closest, get_method


@dataclass
class RunArguments:
    """Fields every recipe shares that are not part of TRL's configs."""

    method: str | None = field(default=None, metadata={"help": "Registered method name (see `posttrain methods`)."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "`pg:<task>/<kind>` (proving ground), a local file/folder, or a hub id."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset config name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split to evaluate on when eval is on."})
    dataset_num_examples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    dataset_seed: int = field(default=0, metadata={"help": "Seed of the proving-ground data generator."})
    build_tiny_model_if_missing: bool = field(
        default=False, metadata={"help": "Build a tiny from-scratch model at model_name_or_path if it is absent."})
    tiny_model_family: str = field(default="llama", metadata={"help": "Tiny model family: llama or qwen2."})
    tiny_model_num_layers: int = field(default=2, metadata={"help": "Decoder layers of the tiny model."})
    auto_resume: bool = field(
        default=True, metadata={"help": "Resume from the newest checkpoint in output_dir when one exists."})
    reset_optimizer_on_resume: bool = field(
        default=False, metadata={"help": "Resume a checkpoint saved under another topology (e.g. ZeRO-3 on N "
                                         "processes, resumed without DeepSpeed) from its weights, step and schedule "
                                         "with a fresh optimizer state."})
    continue_with_changes: bool = field(
        default=False, metadata={"help": "Resume a run although settings that affect training changed since its "
                                         "checkpoint; both settings are recorded with the step range each covered."})
    verbose: bool = field(
        default=False, metadata={"help": "Show every library log line, warning and progress bar (default: one "
                                         "progress bar per phase and a compact metric line per logging step)."})
    eval_task: str | None = field(
        default=None, metadata={"help": "Proving-ground task whose judge scores the trained model (e.g. sort8); "
                                        "none or null: no post-training eval."})
    eval_num_examples: int = field(default=200, metadata={"help": "Held-out prompts for the post-training eval."})
    eval_baseline_model: str | None = field(
        default=None, metadata={"help": "Model to compute the rule-judge win rate against (e.g. the SFT run)."})
    lora_autocast_adapter_dtype: bool = field(
        default=True, metadata={"help": "PEFT's option of that name: keep LoRA adapter weights in float32 over a "
                                        "bf16/fp16 base (false: in the base dtype, no casts at all; docs/methods.md "
                                        "§9)."})
    lora_cast_input_dtype: bool = field(
        default=False, metadata={"help": "PEFT's per-layer cast of each adapted module's input to the adapter dtype. "
                                         "Off by default under bf16/fp16 mixed precision, where autocast already "
                                         "runs the adapter matmuls in half precision (docs/methods.md §9)."})


@dataclass
class IterateArguments:
    """The keys of `posttrain iterate`'s loop (docs/methods.md §3); any recipe may carry them and `posttrain train`
    ignores them. Checked by `posttrain.iterate.check_loop`, not here, so they never stop a plain training run."""

    iterations: int = field(default=3, metadata={"help": "posttrain iterate: loop iterations T."})
    samples_per_prompt: int = field(default=8, metadata={"help": "posttrain iterate: samples K per prompt (>= 2)."})
    sample_temperature: float = field(default=1.0, metadata={"help": "posttrain iterate: sampling temperature."})
    sample_top_p: float = field(default=1.0, metadata={"help": "posttrain iterate: sampling top-p."})
    sample_top_k: int = field(default=0, metadata={"help": "posttrain iterate: sampling top-k (0: no cut)."})
    sample_max_new_tokens: int = field(default=256, metadata={"help": "posttrain iterate: new tokens per sample."})
    sample_batch_size: int = field(
        default=64, metadata={"help": "posttrain iterate: prompts per generation call (and per resumable chunk)."})
    prompt_dataset: str | None = field(
        default=None, metadata={"help": "posttrain iterate: prompts to sample from (pg:<task>/<kind>, file or hub "
                                        "id; a 'prompt' or 'instruction' column)."})
    prompt_split: str = field(default="train", metadata={"help": "posttrain iterate: split of prompt_dataset."})
    prompt_seed: int = field(
        default=1, metadata={"help": "posttrain iterate: generator seed of a pg: prompt_dataset (1: other problems "
                                     "than the SFT data of seed 0)."})
    prompts_per_iteration: int = field(default=256, metadata={"help": "posttrain iterate: prompts per iteration."})
    new_prompts_each_iteration: bool = field(
        default=True, metadata={"help": "posttrain iterate: fresh prompts per iteration as in the paper (false: the "
                                        "same prompts every iteration)."})
    judge: str | None = field(
        default=None, metadata={"help": "posttrain iterate: pairwise judge ranking the samples (rule:<task>, "
                                        "reward:<path>, llm:<path>, llm-openai:<base_url>#<model>, ...)."})
    judge_labels: str = field(default="a,b", metadata={"help": "posttrain iterate: an LLM judge's two labels."})
    judge_seed: int = field(default=0, metadata={"help": "posttrain iterate: seed of the judge's output order."})
    judge_backend: str | None = field(
        default=None, metadata={"help": "posttrain iterate: backend of an llm: judge (default generation_backend)."})
    ranking: str = field(default="tournament", metadata={"help": "posttrain iterate: tournament or all_pairs."})
    eval_judge: str | None = field(
        default=None, metadata={"help": "posttrain iterate: judge of the win rate against pi_0 (default: judge)."})
    eval_prompt_dataset: str | None = field(
        default=None, metadata={"help": "posttrain iterate: held-out prompts of the win rate (default: "
                                        "prompt_dataset)."})
    eval_prompt_split: str = field(default="test", metadata={"help": "posttrain iterate: split of the eval prompts."})
    eval_num_prompts: int = field(default=200, metadata={"help": "posttrain iterate: prompts of the win rate."})
    generation_backend: str = field(
        default="auto", metadata={"help": "posttrain iterate: auto (vLLM when installed), vllm or transformers."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "posttrain iterate: vLLM tensor parallelism."})
    accelerate_config: str | None = field(
        default=None, metadata={"help": "posttrain iterate: accelerate config of the train phase (none: one "
                                        "process)."})


REQUIRED_KEYS = ("method", "model_name_or_path", "dataset_name", "output_dir")
PLACEHOLDER = "<fill in>"  # the value `posttrain recipe M --template` gives each required key
EVAL_OFF = ("", "none", "null")  # eval_task values that turn the post-training eval off
_SECRET_KEY = re.compile(r"(^|_)(hub_token|hf_token|token|api_key|secret|password)$")
_SECRET_VALUE = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,})\b")


@dataclass
class Recipe:
    method: Method
    run: RunArguments
    training: Any  # the method's config dataclass, e.g. trl.DPOConfig
    model: Any  # trl.ModelConfig
    given: dict[str, Any]  # the keys the YAML and command line set, with their parsed values
    loop: IterateArguments = field(default_factory=IterateArguments)  # `posttrain iterate` only

    def resolved(self) -> dict[str, Any]:
        """Every field of every dataclass, tokens redacted: what the run actually used."""
        out: dict[str, Any] = {}
        for part in (self.run, self.model, self.training):
            out.update(part.to_dict() if hasattr(part, "to_dict") else dataclasses.asdict(part))
        return redact(out)


def redact(values: dict[str, Any]) -> dict[str, Any]:
    """Replace secret-looking keys and token-shaped strings with '<redacted>'."""
    out = {}
    for key, value in values.items():
        if _SECRET_KEY.search(key) and value not in (None, ""):
            value = "<redacted>"
        elif isinstance(value, str):
            value = _SECRET_VALUE.sub("<redacted>", value)
        elif isinstance(value, dict):
            value = redact(value)
        out[key] = value
    return out


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a dataclass field annotation. Strings are left to argparse's converters."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any or isinstance(annotation, str | typing.TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if annotation is type(None):
        return value is None
    if origin is Literal:
        return value in args
    if origin in (list, tuple, typing.Sequence, set):
        return isinstance(value, list | tuple) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return isinstance(value, annotation) or value in {member.value for member in annotation}
    return True  # an annotation we do not model: let the dataclass judge


def _field_types(classes) -> dict[str, Any]:
    types_by_name: dict[str, Any] = {}
    for cls in classes:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # unresolvable forward references: fall back to the raw annotations
            hints = {}
        for f in dataclasses.fields(cls):
            if f.init:
                types_by_name.setdefault(f.name, hints.get(f.name, f.type))
    return types_by_name


def _check_value_types(values: dict[str, Any], field_types: dict[str, Any], source: str) -> None:
    for key, value in values.items():
        if isinstance(value, str):
            continue
        annotation = field_types[key]
        if not _matches(value, annotation):
            raise UsageError(f"{source}: key {key!r} expects {_type_name(annotation)}, got "
                             f"{type(value).__name__} {value!r}")


def _check_choices(values: dict[str, Any], classes, source: str) -> None:
    """A YAML value of a field with `choices` metadata is one of them: argparse checks choices on the command line
    only, so `dtype: float23` in a recipe reached torch as a traceback."""
    choices = {f.name: list(f.metadata["choices"]) for cls in classes for f in dataclasses.fields(cls)
               if "choices" in f.metadata}
    for key, value in values.items():
        if key in choices and value is not None and value not in choices[key]:
            raise UsageError(f"{source}: {key} must be one of {', '.join(map(str, choices[key]))}, got {value!r}"
                             f"{closest(str(value), choices[key])}")


def read_recipe_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if file.is_dir():
        raise UsageError(f"--config {path!r} is a folder; pass a recipe YAML file")
    if not file.is_file():
        raise UsageError(f"recipe file {path!r} not found; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UsageError(not_utf8("recipe", path, err.start, err.object[err.start])) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"recipe {path!r} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if data is None:
        raise UsageError(f"recipe {path!r} is empty; it needs at least: {', '.join(REQUIRED_KEYS)}")
    if not isinstance(data, dict):
        raise UsageError(f"recipe {path!r} must be a YAML mapping of key: value, not a {type(data).__name__}")
    return data


def split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    argv = list(argv)
    for index, token in enumerate(argv):
        if token == "--config":
            if index + 1 >= len(argv):
                raise UsageError("--config needs a path to a recipe YAML file")
            return argv[index + 1], argv[:index] + argv[index + 2:]
        if token.startswith("--config="):
            return token.split("=", 1)[1], argv[:index] + argv[index + 1:]
    return None, argv


def cli_value(argv: list[str], key: str) -> str | None:
    for index, token in enumerate(argv):
        if token == f"--{key}" and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(f"--{key}="):
            return token.split("=", 1)[1]
    return None


def _make_parser(classes, source: str):
    from trl import TrlParser

    class _Parser(TrlParser):
        def error(self, message):  # argparse would print usage and exit; we want one line
            raise UsageError(f"{source} or command line: {message}")

    return _Parser(classes, allow_abbrev=False)  # `--learning_rat` must not silently mean --learning_rate


def parse_recipe(argv: list[str]) -> Recipe:
    """Parse `--config recipe.yaml [--key value ...]` into the method's dataclasses."""
    from trl import ModelConfig

    config_path, cli = split_config_flag(argv)
    values = read_recipe_file(config_path) if config_path else {}
    source = f"recipe {config_path!r}" if config_path else "command line"
    env = values.pop("env", {}) or {}
    if not isinstance(env, dict):
        raise UsageError(f"{source}: 'env' must be a mapping of variable: value")
    method_name = cli_value(cli, "method") or values.get("method")
    if not method_name:
        raise UsageError(f"{source} has no 'method' key; add e.g. 'method: sft' (see `posttrain methods`)")
    method = get_method(str(method_name))
    classes = (RunArguments, method.config_class, ModelConfig, IterateArguments)
    field_types = _field_types(classes)
    for key in values:
        if key not in field_types:
            raise UsageError(f"{source}: unknown key {key!r}{closest(key, field_types)} "
                             f"(not a field of {method.name}'s configs)")
    _check_value_types(values, field_types, source)
    _check_choices(values, classes, source)
    for key, value in env.items():
        os.environ[str(key)] = str(value)

    cli_keys = _cli_keys(cli)
    missing = [k for k in REQUIRED_KEYS if k not in cli_keys and values.get(k) in (None, "")]
    if missing:
        raise UsageError(f"{source} is missing required key(s): {', '.join(missing)}")
    unfilled = [k for k, v in values.items() if v == PLACEHOLDER and k not in cli_keys]
    if unfilled:
        raise UsageError(f"{source}: replace the template placeholder {PLACEHOLDER!r} of {', '.join(unfilled)} "
                         f"with real values")
    parser = _make_parser(classes, source)
    parser.set_defaults_with_config(**values)
    try:
        run, training, model, loop, unknown = parser.parse_args_into_dataclasses(args=cli,
                                                                                 return_remaining_strings=True)
    except ValueError as err:  # raised by a config's __post_init__ validation
        raise UsageError(f"{source}: invalid setting: {str(err).splitlines()[0]}") from None
    if unknown:
        flag = next((u for u in unknown if u.startswith("--")), unknown[0])
        key = flag.lstrip("-").split("=")[0]
        raise UsageError(f"unknown command-line option {flag!r}{closest(key, field_types)}")
    _settle_eval_task(run)
    _settle_lora_targets(model)
    _check_ranges((run, training, model), source)
    check_output_folder(training.output_dir, "output_dir")
    given = {key: getattr(part, key) for key in [*values, *cli_keys]
             for part in (run, training, model) if hasattr(part, key) and key in field_types}
    return Recipe(method=method, run=run, training=training, model=model, given=given, loop=loop)


# Counts that must be at least this, when set (None: unset). The libraries fail on 0 or below with a traceback
# after the model loads (batch size, accumulation, lengths, LoRA rank) or silently take 0 to mean "all" (the two
# example counts).
AT_LEAST = {"per_device_train_batch_size": 1, "per_device_eval_batch_size": 1, "gradient_accumulation_steps": 1,
            "max_length": 1, "max_prompt_length": 1, "max_completion_length": 1, "dataset_num_examples": 1,
            "eval_num_examples": 1, "learning_rate": 0, "seed": 0}
_RANGE_HINTS = {"dataset_num_examples": " (remove the key to train on every row)",
                "max_length": " (null: no truncation)"}


def _check_ranges(parts, source: str) -> None:
    """Counts and rates in range, before any file is written or any model loads."""
    values = {key: getattr(part, key) for part in parts for key in AT_LEAST if hasattr(part, key)}
    model, training = parts[2], parts[1]
    if model.use_peft:
        values["lora_r"], least = model.lora_r, {**AT_LEAST, "lora_r": 1}
    else:
        least = AT_LEAST
    for key, value in values.items():
        if value is not None and not isinstance(value, bool) and value < least[key]:
            raise UsageError(f"{source}: {key} must be at least {least[key]}, got {value}; set it to {least[key]} "
                             f"or more{_RANGE_HINTS.get(key, '')}")
    if model.use_peft and not 0 <= model.lora_dropout < 1:
        raise UsageError(f"{source}: lora_dropout must be in [0, 1), got {model.lora_dropout}; e.g. 0.05")
    if training.max_steps <= 0 and training.num_train_epochs <= 0:
        raise UsageError(f"{source}: num_train_epochs is {training.num_train_epochs}, so the run would train no "
                         f"step; set num_train_epochs above 0 or max_steps to 1 or more")


def _settle_eval_task(run: RunArguments) -> None:
    """`none`, `null` or '' turn the post-training eval off; any other name must be a proving-ground task."""
    from posttrain.data.tasks import TASKS, get_eval_task

    if run.eval_task is None or run.eval_task.strip().lower() in EVAL_OFF:
        run.eval_task = None
    elif run.eval_task not in TASKS:
        raise UsageError(f"unknown eval_task {run.eval_task!r}{closest(run.eval_task, TASKS)} (tasks: "
                         f"{', '.join(TASKS)}; none turns the post-training eval off)")
    else:
        get_eval_task(run.eval_task, "eval_task")


def _settle_lora_targets(model) -> None:
    """TRL turns a one-name list into a bare string, which PEFT reads as a regex matched against full module names,
    so `--lora_target_modules q_proj` alone matched nothing. Keep a single plain name a list (suffix match);
    'all-linear' and regex strings stay strings."""
    target = model.lora_target_modules
    if isinstance(target, str) and target != "all-linear" and re.fullmatch(r"[\w.]+", target):
        model.lora_target_modules = [target]


def _cli_keys(argv: list[str]) -> list[str]:
    return [t[2:].split("=")[0] for t in argv if t.startswith("--")]


def load_recipe(path: str, **overrides: Any) -> Recipe:
    """Programmatic form: `load_recipe('recipes/sft/sort8_tiny_cpu.yaml', learning_rate=1e-4)`."""
    argv = ["--config", path]
    for key, value in overrides.items():
        argv += [f"--{key}", *(map(str, value) if isinstance(value, list | tuple) else [str(value)])]
    return parse_recipe(argv)
