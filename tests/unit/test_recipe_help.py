"""Discoverable keys (issue 11, defect 4): `posttrain train --help`, every key of a method with its real default,
and a starter recipe that `posttrain train --config` accepts once its placeholders are filled."""

from __future__ import annotations

import re

import pytest
import yaml

from posttrain.cli import main
from posttrain.errors import UsageError
from posttrain.recipe import PLACEHOLDER, parse_recipe
from posttrain.recipe_help import template
from posttrain.registry import METHODS


def test_train_help_exits_0_with_usage_methods_and_how_to_see_keys(capsys):
    main(["train", "--help"])  # returns: no SystemExit(2) "command line has no 'method' key"
    out = capsys.readouterr().out
    assert "--config" in out and "posttrain train --method dpo --help" in out and "posttrain recipe dpo" in out
    for name in METHODS:
        assert re.search(rf"^  {name}\s", out, re.MULTILINE)


def _key_lines(text: str) -> dict[str, str]:
    """key -> default column of `posttrain recipe M` output."""
    return {m[1]: m[2] for m in re.finditer(r"^  (\w+)\s+(\S+)", text, re.MULTILINE)}


def test_method_help_lists_every_key_once_with_its_dataclass_default(capsys):
    main(["train", "--method", "dpo", "--help"])
    out = capsys.readouterr().out
    keys = _key_lines(out)
    assert keys["beta"] == "0.1" and keys["learning_rate"] == "1.0e-06" and keys["lora_r"] == "16"
    assert keys["model_name_or_path"] == "(required)" and keys["eval_task"] == "null"
    assert out.index("posttrain RunArguments:") < out.index("trl DPOConfig:") < out.index("trl ModelConfig:")
    assert len(re.findall(r"^  beta\s", out, re.MULTILINE)) == 1
    assert max(map(len, out.splitlines())) <= 130  # one short line per key


def test_config_help_shows_defaults_not_the_recipes_values(capsys, write_recipe):
    path = write_recipe({"method": "rpo", "beta": 0.3, "learning_rate": 0.5})
    main(["train", "--config", path, "--help"])
    via_config = capsys.readouterr().out
    main(["recipe", "rpo"])
    assert capsys.readouterr().out == via_config
    assert _key_lines(via_config)["beta"] == "0.01"  # RPOConfig's default, not the recipe's 0.3


def test_template_is_refused_over_an_existing_file(tmp_path, capsys):
    target = tmp_path / "mine.yaml"
    main(["recipe", "dpo", "--template", "--output", str(target)])
    written = target.read_text()
    assert written.startswith("# Starter recipe for dpo")
    with pytest.raises(SystemExit) as exit_info:
        main(["recipe", "dpo", "--template", "--output", str(target)])
    assert exit_info.value.code == 2 and "already exists" in capsys.readouterr().err
    assert target.read_text() == written


@pytest.mark.parametrize("method", sorted(METHODS))
def test_filled_template_parses_and_every_commented_default_is_a_valid_value(method, tmp_path):
    text = template(METHODS[method], cpu_only=True)
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match="replace the template placeholder"):
        parse_recipe(["--config", str(path)])
    filled = text.replace(PLACEHOLDER, str(tmp_path / "x"))
    path.write_text(filled)
    assert parse_recipe(["--config", str(path)]).method.name == method
    uncommented = re.sub(r"^# (\w+: .*?)(  # .*)?$", r"\1", filled, flags=re.MULTILINE)
    assert len(yaml.safe_load(uncommented)) > 30
    path.write_text(uncommented)
    parse_recipe(["--config", str(path)])
