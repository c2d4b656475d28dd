"""Recipe parsing: every shipped recipe parses, and every user mistake is one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from posttrain.errors import UsageError
from posttrain.recipe import load_recipe, parse_recipe, redact

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)
BASE = {"method": "dpo", "model_name_or_path": "some/model", "dataset_name": "pg:sort8/preference",
        "output_dir": "out", "use_cpu": True, "bf16": False}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_recipe_parses(path):
    # GPU recipes (bf16) fail transformers' device check on a CPU machine; everything else is parsed as shipped.
    on_gpu = yaml.safe_load(path.read_text()).get("bf16") is True
    recipe = parse_recipe(["--config", str(path), *(["--bf16", "false", "--use_cpu", "true"] if on_gpu else [])])
    assert recipe.method.name == path.parent.name  # recipes/<method>/*.yaml
    assert recipe.given["output_dir"]


def test_recipes_exist_for_each_baseline():
    assert {p.parent.name for p in RECIPES} >= {"sft", "dpo", "rpo"}


def test_rpo_paper_recipe_keeps_the_papers_settings():
    recipe = parse_recipe(["--config", str(REPO / "recipes/rpo/zephyr-7b_ultrafeedback_zero3.yaml"),
                           "--bf16", "false", "--use_cpu", "true"])
    args = recipe.training
    assert (args.rpo_eta, args.beta, args.learning_rate, args.num_train_epochs) == (0.005, 0.01, 5e-7, 1)
    assert (args.sft_normalization, args.lr_scheduler_type, args.warmup_steps) == ("sum", "cosine", 0.1)


def test_values_reach_the_trl_config_and_cli_overrides_yaml(write_recipe):
    path = write_recipe({**BASE, "learning_rate": "1e-5", "beta": 0.2, "loss_type": ["sigmoid", "sft"]})
    recipe = parse_recipe(["--config", path, "--beta", "0.3"])
    assert type(recipe.training).__name__ == "DPOConfig"
    assert recipe.training.learning_rate == pytest.approx(1e-5)
    assert recipe.training.beta == pytest.approx(0.3)  # command line wins
    assert recipe.training.loss_type == ["sigmoid", "sft"]
    assert recipe.model.model_name_or_path == "some/model"
    assert recipe.given["beta"] == pytest.approx(0.3)


def test_load_recipe_overrides(write_recipe):
    recipe = load_recipe(write_recipe(BASE), output_dir="elsewhere", max_steps=7)
    assert recipe.training.output_dir == "elsewhere" and recipe.training.max_steps == 7


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"learnin_rate": 1e-5}, "unknown key 'learnin_rate'; did you mean 'learning_rate'?"),
        ({"learning_rate": [1, 2]}, "key 'learning_rate' expects float, got list"),
        ({"beta": True}, "key 'beta' expects float, got bool"),
        ({"max_steps": 1.5}, "key 'max_steps' expects int, got float"),
        ({"learning_rate": "fast"}, "invalid float value: 'fast'"),
        ({"method": "dpoo"}, "unknown method 'dpoo'; did you mean 'dpo'?"),
        ({"output_dir": None}, "missing required key(s): output_dir"),
    ],
)
def test_user_mistakes_become_one_line_errors(write_recipe, change, expected):
    values = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(UsageError) as err:
        parse_recipe(["--config", write_recipe(values)])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_method_and_unknown_cli_option(write_recipe):
    with pytest.raises(UsageError, match="has no 'method' key"):
        parse_recipe(["--config", write_recipe({k: v for k, v in BASE.items() if k != "method"})])
    with pytest.raises(UsageError, match="did you mean 'beta'"):
        parse_recipe(["--config", write_recipe(BASE), "--bta", "0.3"])


@pytest.mark.parametrize(
    ("content", "expected"),
    [("", "is empty"), ("- a\n- b\n", "must be a YAML mapping"), ("method: [sft\n", "is not valid YAML")],
)
def test_bad_files(tmp_path, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(UsageError, match=expected):
        parse_recipe(["--config", str(path)])
    with pytest.raises(UsageError, match="not found"):
        parse_recipe(["--config", str(tmp_path / "nope.yaml")])


def test_tokens_are_redacted():
    values = {"hub_token": "hf_abcdefghijklmnopqrstuvwxyz123456", "pad_token": None, "note": "key sk-" + "x" * 24,
              "learning_rate": 1e-5, "max_new_tokens": 3}
    out = redact(values)
    assert out["hub_token"] == "<redacted>"
    assert out["note"] == "key <redacted>"
    assert out["learning_rate"] == 1e-5 and out["max_new_tokens"] == 3 and out["pad_token"] is None


def test_cli_unknown_key_exits_2_with_one_line(write_recipe):
    path = write_recipe({**BASE, "learnin_rate": 1e-5})
    proc = subprocess.run([sys.executable, "-m", "posttrain.cli", "train", "--config", path],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("posttrain: error:")]
    assert len(errors) == 1 and "learnin_rate" in errors[0] and "learning_rate" in errors[0]
    assert "Traceback" not in proc.stderr
