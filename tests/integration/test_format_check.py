"""The chat-format check (issue 11, defect 3): plain-string rows on a chat-templated model get one warning line
before training; conversational rows on a model without a chat template stop before any model loads."""

from __future__ import annotations

import json
import shutil

import pytest
from trl.data_utils import is_conversational

import posttrain.train as train_module
from posttrain.cli import main
from posttrain.data import proving_ground_rows
from posttrain.recipe import parse_recipe
from posttrain.train import build_trainer

from ..conftest import CPU_SETTINGS

PLAIN_PAIR = {"prompt": "sort 29141777", "chosen": "11247779", "rejected": "11247797"}
CHAT_PAIR = {"prompt": [{"role": "user", "content": "sort 29141777"}],
             "chosen": [{"role": "assistant", "content": "11247779"}],
             "rejected": [{"role": "assistant", "content": "11247797"}]}


class ModelLoaded(Exception):
    """Raised instead of loading the model: the check must have spoken by then."""


@pytest.fixture
def stop_at_model_load(monkeypatch):
    def _refuse(recipe):
        raise ModelLoaded

    monkeypatch.setattr(train_module, "_load_model", _refuse)


def _recipe_args(write_recipe, tmp_path, model, rows, method="dpo") -> list[str]:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    values = {"method": method, "model_name_or_path": str(model), "dataset_name": str(data),
              "output_dir": str(tmp_path / "run"), **CPU_SETTINGS}
    return ["--config", write_recipe(values)]


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("posttrain: warning:")]


@pytest.mark.parametrize(("method", "row", "warned"), [
    ("dpo", PLAIN_PAIR, True),
    ("dpo", CHAT_PAIR, False),
    ("sft", {"prompt": "sort 29141777", "completion": "11247779"}, True),
    ("sft", {"text": "sort 29141777 11247779"}, False),  # language modelling (continued pretraining) is legitimate
])
def test_plain_strings_on_a_chat_model_warn_once_before_the_model_loads(
        write_recipe, tmp_path, tiny_model_dir, capsys, stop_at_model_load, method, row, warned):
    recipe = parse_recipe(_recipe_args(write_recipe, tmp_path, tiny_model_dir, [row] * 4, method))
    with pytest.raises(ModelLoaded):
        build_trainer(recipe)
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) == int(warned)
    if warned:
        assert "chat template" in lines[0] and 'lists of {"role", "content"} messages' in lines[0]


def test_conversational_rows_without_a_chat_template_stop_before_work(write_recipe, tmp_path, tiny_model_dir,
                                                                      capsys):
    model = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *_recipe_args(write_recipe, tmp_path, model, [CHAT_PAIR] * 4)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err and "Traceback" not in err
    assert "is conversational" in err and "has no chat template" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("spec", ["sort8/sft", "sort8/preference"])
def test_proving_ground_sort_data_is_conversational(spec):
    assert is_conversational(proving_ground_rows(spec, n=2)[0])
