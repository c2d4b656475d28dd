"""Validation before work (issue 11, defects 5 and 6): eval_task, paths, LoRA target modules and file encodings
fail with one line before any model loads, and leave no output folder behind."""

from __future__ import annotations

import pytest

from posttrain.cli import main
from posttrain.data import load_any_dataset
from posttrain.data.loading import first_non_utf8_byte
from posttrain.errors import UsageError
from posttrain.preflight import check_lora_targets, check_paths
from posttrain.recipe import parse_recipe

from ..conftest import CPU_SETTINGS

BASE = {"method": "sft", "dataset_name": "pg:sort8/sft", **CPU_SETTINGS}


@pytest.fixture
def recipe_args(write_recipe, tmp_path):
    def _args(model="some/model", **extra) -> list[str]:
        values = {**BASE, "model_name_or_path": str(model), "output_dir": str(tmp_path / "run"), **extra}
        return ["--config", write_recipe(values)]

    return _args


@pytest.mark.parametrize("off", ["none", "null", "None", ""])
def test_eval_task_none_or_null_turns_the_eval_off(recipe_args, off):
    assert parse_recipe([*recipe_args(), "--eval_task", off]).run.eval_task is None


def test_unknown_eval_task_fails_at_parse_time_with_the_closest_name(recipe_args):
    with pytest.raises(UsageError, match="unknown eval_task 'sort88'; did you mean 'sort8'"):
        parse_recipe([*recipe_args(), "--eval_task", "sort88"])
    assert parse_recipe([*recipe_args(), "--eval_task", "sort6"]).run.eval_task == "sort6"


def test_non_utf8_recipe_is_one_line_with_the_byte_offset(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("method: sft\n# café\n".encode("latin-1"))
    with pytest.raises(UsageError, match=r"not UTF-8 text \(byte 17 is 0xe9\); re-save it with UTF-8"):
        parse_recipe(["--config", str(path)])


@pytest.mark.parametrize(("name", "content", "offset"), [
    ("pairs.jsonl", '{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n', 15),
    ("pairs.json", '[{"prompt": "\xfcber", "chosen": "a", "rejected": "b"}]', 13),
    ("pairs.csv", "prompt,chosen,rejected\ncaf\xe9,a,b\n", 26),
])
def test_non_utf8_dataset_file_is_one_line_with_the_byte_offset(tmp_path, name, content, offset):
    path = tmp_path / name
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(UsageError, match=rf"dataset file .*{name}' is not UTF-8 text \(byte {offset} is "):
        load_any_dataset(str(path))


def test_malformed_dataset_file_is_one_line(tmp_path, capfd):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "x", "chosen": \n')
    with pytest.raises(UsageError, match="cannot read dataset .*JSON parse error.*well-formed JSON lines"):
        load_any_dataset(str(path))
    assert "Failed to load JSON" not in capfd.readouterr().err  # datasets' own error log is held back


def test_first_non_utf8_byte_counts_across_chunks(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"a" * ((1 << 20) - 1) + "é".encode() + b"xyz")  # a 2-byte character split across chunks
    assert first_non_utf8_byte(path) is None
    path.write_bytes(b"a" * ((1 << 20) + 5) + b"\xff")
    assert first_non_utf8_byte(path) == ((1 << 20) + 5, 0xFF)
    path.write_bytes(b"ab\xe2\x82")  # truncated at the end of the file
    assert first_non_utf8_byte(path) == (2, 0xE2)


def test_missing_paths_fail_before_work(recipe_args, tmp_path):
    with pytest.raises(UsageError, match="model_name_or_path path '.*nope' does not exist"):
        check_paths(parse_recipe(recipe_args(tmp_path / "nope")))
    with pytest.raises(UsageError, match="eval_baseline_model path '.*gone' does not exist"):
        check_paths(parse_recipe(recipe_args(eval_task="sort8", eval_baseline_model=str(tmp_path / "gone"))))
    with pytest.raises(UsageError, match="dataset_name './missing.jsonl' does not exist"):
        check_paths(parse_recipe(recipe_args(dataset_name="./missing.jsonl")))
    (tmp_path / "notes").mkdir()
    with pytest.raises(UsageError, match="model_name_or_path '.*notes' is not a model folder .no config.json"):
        check_paths(parse_recipe(recipe_args(tmp_path / "notes")))
    check_paths(parse_recipe(recipe_args(tmp_path / "built", build_tiny_model_if_missing=True)))  # built later


def _lora(recipe_args, model, *targets):
    return parse_recipe([*recipe_args(model, use_peft=True), "--lora_target_modules", *targets])


@pytest.mark.parametrize("targets", [["q_proj"], ["q_proj", "v_proj"], ["all-linear"], [".*self_attn\\.q_proj"],
                                     ["self_attn.o_proj"]])
def test_valid_lora_targets_pass(recipe_args, tiny_model_dir, targets):
    check_lora_targets(_lora(recipe_args, tiny_model_dir, *targets))


def test_a_single_lora_target_name_stays_a_suffix_match(recipe_args, tiny_model_dir):
    # TRL makes a one-name list a bare string, which PEFT reads as a regex over full module names: no match.
    assert _lora(recipe_args, tiny_model_dir, "q_proj").model.lora_target_modules == ["q_proj"]


@pytest.mark.parametrize(("targets", "bad", "close"), [(["q_projj"], "q_projj", "q_proj"),
                                                        (["q_proj", "v_projj"], "v_projj", "v_proj")])
def test_unknown_lora_target_names_the_closest_module(recipe_args, tiny_model_dir, targets, bad, close):
    with pytest.raises(UsageError, match=rf"lora_target_modules '{bad}' matches no module .*did you mean '{close}'"):
        check_lora_targets(_lora(recipe_args, tiny_model_dir, *targets))


def test_lora_typo_exits_2_with_one_line_and_no_run_folder(recipe_args, tiny_model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *recipe_args(tiny_model_dir, use_peft=True), "--lora_target_modules", "q_projj"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("posttrain: error:")] == [err.strip()]
    assert "q_projj" in err and not (tmp_path / "run").exists()
