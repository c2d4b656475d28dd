"""Security defaults: remote model code is off unless asked for, no shell runs a command line, no unsafe pickle load."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from posttrain.evaluation import loglikelihood, mmlu, mmlu_cli, winrate_cli
from posttrain.export import build_parser as export_parser
from posttrain.export import export
from posttrain.generation.vllm_engine import VLLMGenerator
from posttrain.models import load_causal_lm, load_tokenizer
from posttrain.recipe import parse_recipe
from posttrain.registry import METHODS

from ..conftest import CPU_SETTINGS

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("posttrain", "scripts", "eval")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_recipes_leave_remote_code_off_by_default(method, write_recipe, tmp_path):
    recipe = parse_recipe(["--config", write_recipe({"method": method, "model_name_or_path": "m",
                                                     "dataset_name": "pg:sort8/sft",
                                                     "output_dir": str(tmp_path / "run"), **CPU_SETTINGS})])
    assert recipe.training.trust_remote_code is False


@pytest.mark.parametrize("function", [load_causal_lm, load_tokenizer, export, mmlu.evaluate_mmlu,
                                      loglikelihood.load_scorer, VLLMGenerator.__init__])
def test_loaders_leave_remote_code_off_by_default(function):
    assert inspect.signature(function).parameters["trust_remote_code"].default is False


def test_command_lines_leave_remote_code_off_by_default():
    assert export_parser().parse_args(["run", "--output", "out"]).trust_remote_code is False
    assert mmlu_cli.build_parser().parse_args(["--model", "m"]).trust_remote_code is False
    winrate = winrate_cli.build_parser().parse_args(["--model", "m", "--output_dir", "out"])
    assert getattr(winrate, "trust_remote_code", False) is False  # no such flag: every loader keeps its default


def _calls(path: Path):
    return [node for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path)))
            if isinstance(node, ast.Call)]


def _keyword(call: ast.Call, name: str):
    """The constant value of keyword `name` in `call`; None when absent, Ellipsis when not a constant."""
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else ...
    return None


def _is_torch_load(call: ast.Call) -> bool:
    func = call.func
    return isinstance(func, ast.Attribute) and func.attr == "load" and isinstance(func.value, ast.Name) \
        and func.value.id == "torch"


def _shell_calls(path: Path) -> list[int]:
    return [call.lineno for call in _calls(path) if _keyword(call, "shell") not in (None, False)]


def _unsafe_torch_loads(path: Path) -> list[int]:
    return [call.lineno for call in _calls(path) if _is_torch_load(call) and _keyword(call, "weights_only") is not True]


SOURCES = sorted(path for folder in SOURCE_DIRS for path in (REPO / folder).rglob("*.py"))


def test_the_source_scan_sees_the_package_and_finds_what_it_looks_for(tmp_path):
    assert REPO / "posttrain" / "train.py" in SOURCES and len(SOURCES) > 30
    sample = tmp_path / "sample.py"
    sample.write_text("import subprocess, torch\nsubprocess.run(cmd, shell=True)\ntorch.load(p)\n"
                      "torch.load(p, weights_only=False)\ntorch.load(p, weights_only=True)\nsubprocess.run(cmd)\n")
    assert _shell_calls(sample) == [2] and _unsafe_torch_loads(sample) == [3, 4]


def test_no_subprocess_runs_through_a_shell():
    assert {str(path.relative_to(REPO)): lines for path in SOURCES if (lines := _shell_calls(path))} == {}


def test_every_torch_load_is_weights_only():
    assert {str(path.relative_to(REPO)): lines for path in SOURCES if (lines := _unsafe_torch_loads(path))} == {}
