"""Issue 11, defects 5 (rule judge half), 8 (winrate half) and 9: `posttrain eval winrate` says what it does and
refuses what cannot work before generating or judging anything."""

from __future__ import annotations

import json

import pytest

from posttrain.errors import UsageError
from posttrain.evaluation.winrate_cli import main, run
from tests.e2e.test_winrate_eval import half_gold_reference, widened_copy, write_outputs


def _generate_args(model, out, *extra) -> list[str]:
    return ["--model", str(model), "--reference", str(model), "--instructions", "pg:sort8/sft", "--max_instructions",
            "3", "--backend", "transformers", "--output_dir", str(out), *extra]


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert stop.value.code == 0
    assert "(default: 256)" in text and "(default: a,b)" in text and "(default: 64)" in text


def test_bars_for_generation_and_judging_then_reused_counts_on_rerun(tiny_model_dir, tmp_path, capsys):
    args = _generate_args(tiny_model_dir, tmp_path / "out", "--judge", "rule:sort8", "--max_new_tokens", "12")
    run(args)
    first = capsys.readouterr()
    assert "generate model: 100%" in first.err and "generate reference: 100%" in first.err
    assert "judge: 100%" in first.err and "reused" not in first.out
    run(args)
    second = capsys.readouterr().out
    assert "generate model: reused 3 cached generations" in second
    assert "generate reference: reused 3 cached generations" in second
    assert "judge: reused 3 cached annotations" in second


def test_rule_judge_without_gold_answers_fails_before_generating(tiny_model_dir, tmp_path):
    data = tmp_path / "instructions.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"sort {n}"}) + "\n" for n in (3141, 2718)))
    out = tmp_path / "out"
    argv = _generate_args(tiny_model_dir, out, "--judge", "rule:sort8")
    argv[argv.index("pg:sort8/sft")] = str(data)
    with pytest.raises(UsageError, match="needs gold answers, but 2 of 2 instructions have none"):
        run(argv)
    assert not list(out.glob("generations.*"))


def test_max_new_tokens_is_capped_at_the_models_context_with_a_note(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    run(_generate_args(tiny_model_dir, out, "--judge", "rule:sort8", "--max_new_tokens", "300"))
    note = [line for line in capsys.readouterr().out.splitlines() if "max_new_tokens 300 capped at" in line]
    assert len(note) == 2  # once for the model, once for the reference
    cap = int(note[0].split("capped at ")[1].split(":")[0])
    assert f"has 256 positions and the longest prompt takes {256 - cap}" in note[0]
    generated = [json.loads(line) for line in (out / "generations.model.jsonl").read_text().splitlines()]
    assert all(len(record["completions"][0]["token_ids"]) <= cap for record in generated)


def test_llm_judge_prompt_longer_than_the_judges_context_fails_before_any_work(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    judge = f"llm:{tiny_model_dir}"  # 256 positions; the judge template alone takes about 310 tokens
    with pytest.raises(UsageError, match=r"can reach \d+ tokens \(\d+ > 256\).*lower --max_new_tokens"):
        run(_generate_args(tiny_model_dir, out, "--judge", judge, "--max_new_tokens", "8"))
    assert not list(out.glob("generations.*"))
    model = write_outputs(tmp_path / "model.json", ["1"] * 6, "m")
    with pytest.raises(UsageError, match=r"\(\d+ > 256\)") as error:
        run(["--model_outputs", model, "--reference_outputs", half_gold_reference(tmp_path), "--instructions",
             "pg:sort8/sft", "--max_instructions", "6", "--judge", judge, "--backend", "transformers",
             "--output_dir", str(out)])
    assert "--max_new_tokens" not in str(error.value)  # nothing left to generate: shorter inputs or another judge
    assert not (out / "annotations.cache.jsonl").exists()


def test_llm_judge_failing_on_every_example_names_judge_labels(tiny_model_dir, tmp_path):
    judge = widened_copy(tiny_model_dir, tmp_path / "judge")
    model = write_outputs(tmp_path / "model.json", ["12345678", "", "1", "x", "00", "9"], "m")
    with pytest.raises(UsageError, match=r"failed on all 6 examples.*--judge_labels 'first-output,second-output'"):
        run(["--model_outputs", model, "--reference_outputs", half_gold_reference(tmp_path), "--instructions",
             "pg:sort8/sft", "--max_instructions", "6", "--judge", f"llm:{judge}", "--judge_labels",
             "first-output,second-output", "--backend", "transformers", "--output_dir", str(tmp_path / "out")])
