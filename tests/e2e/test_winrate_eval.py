"""`posttrain eval winrate` end to end on the proving ground: generate, judge (rule, LLM via transformers and via
vLLM), write AlpacaEval files, resume after a kill without regenerating or re-judging, and refuse bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.data import get_task, proving_ground_rows
from posttrain.errors import UsageError
from posttrain.evaluation.winrate import winrate_metrics
from posttrain.evaluation.winrate_cli import main, run

N = 6
TASK = get_task("sort8")


def instructions() -> list[dict]:
    return [{"instruction": r["prompt"][-1]["content"], "answer": r["answer"]}
            for r in proving_ground_rows("sort8/sft", split="test", n=N)]


def write_outputs(path: Path, texts: list[str], generator: str) -> str:
    path.write_text(json.dumps([{"instruction": r["instruction"], "output": t, "generator": generator}
                                for r, t in zip(instructions(), texts)]))
    return str(path)


def half_gold_reference(tmp_path: Path) -> str:
    """Reference outputs: the right answer for the first half, a reversed (wrong) one for the rest."""
    answers = [r["answer"] for r in instructions()]
    texts = [a if k < N // 2 else a[::-1] for k, a in enumerate(answers)]
    return write_outputs(tmp_path / "reference.json", texts, "half-gold")


def read(path: Path):
    return json.loads(path.read_text())


def cache_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def generation_args(model: str, reference: str, out: Path, judge: str = "rule:sort8") -> list[str]:
    return ["--model", model, "--reference_outputs", reference, "--instructions", "pg:sort8/sft",
            "--max_instructions", str(N), "--judge", judge, "--backend", "transformers", "--max_new_tokens", "12",
            "--output_dir", str(out)]


def test_rule_judge_end_to_end_then_resume_without_regenerating(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    reference, out = half_gold_reference(tmp_path), tmp_path / "out"
    metrics = run(generation_args(str(model), reference, out))

    outputs = [r["output"] for r in read(out / "model_outputs.json")]
    references = [r["output"] for r in read(out / "reference_outputs.json")]
    answers = [r["answer"] for r in instructions()]
    expected = [2.0 if TASK.score(o, a) > TASK.score(r, a) else 1.0 if TASK.score(r, a) > TASK.score(o, a) else 1.5
                for o, r, a in zip(outputs, references, answers)]
    annotations = read(out / "annotations.json")
    assert [a["preference"] for a in annotations] == expected
    assert all(a["generator_2"] == "model" and a["generator_1"] == "half-gold" for a in annotations)
    assert [a["output_2"] for a in annotations] == outputs and [a["output_1"] for a in annotations] == references
    assert metrics == pytest.approx(winrate_metrics(expected, outputs, references), nan_ok=True)
    assert read(out / "leaderboard.json") == {"model": metrics}
    # The untrained model cannot sort, so the gold half of the reference wins.
    assert all(p == 1.0 for p in expected[:N // 2])

    # Simulate a kill during generation: 2 prompts done and a torn third line; results and annotations gone.
    cache = out / "generations.model.jsonl"
    kept = cache_lines(cache)[:2]
    cache.write_text("\n".join(kept) + '\n{"index": 2, "prompt_')
    for name in ("annotations.json", "leaderboard.json", "annotations.cache.jsonl"):
        (out / name).unlink()
    assert run(generation_args(str(model), reference, out)) == pytest.approx(metrics, nan_ok=True)
    lines = cache_lines(cache)
    assert lines[:2] == kept  # the finished prompts were kept, not regenerated
    assert sorted(json.loads(line)["index"] for line in lines[2:] if line.endswith("}")) == list(range(2, N))
    assert [r["output"] for r in read(out / "model_outputs.json")] == outputs

    # Everything cached: a rerun needs no model at all.
    shutil.rmtree(model)
    before = {name: (out / name).read_bytes() for name in ("generations.model.jsonl", "annotations.cache.jsonl")}
    assert run(generation_args(str(model), reference, out)) == pytest.approx(metrics, nan_ok=True)
    assert before == {name: (out / name).read_bytes() for name in before}


def test_outputs_files_and_a_local_instructions_file(tmp_path):
    rows = instructions()
    data = tmp_path / "instructions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = write_outputs(tmp_path / "model.json", [r["answer"] for r in rows[:2]] + ["9"] * (N - 2), "m")
    reference = half_gold_reference(tmp_path)
    metrics = run(["--instructions", str(data), "--model_outputs", model, "--reference_outputs", reference,
                   "--judge", "rule:sort8", "--output_dir", str(tmp_path / "out")])
    # model right on 0-1 (reference also right: ties), wrong on 2-5; reference right on 0-2, wrong on 3-5
    assert [a["preference"] for a in read(tmp_path / "out" / "annotations.json")] == [1.5, 1.5, 1.0, 1.5, 1.5, 1.5]
    assert (metrics["n_draws"], metrics["n_wins_base"], metrics["n_wins"]) == (5, 1, 0)
    assert metrics["win_rate"] == pytest.approx(500 / 12)
    assert metrics["avg_length"] == int((8 + 8 + 1 * (N - 2)) / N)


def widened_copy(model_dir: Path, path: Path, positions: int = 1024) -> Path:
    """A copy of the tiny model whose context holds a judge prompt (RoPE: same weights, more positions)."""
    shutil.copytree(model_dir, path)
    config = read(path / "config.json")
    (path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": positions}))
    return path


def test_llm_judge_annotations_resume_without_rejudging(tiny_model_dir, tmp_path):
    judge_dir = widened_copy(tiny_model_dir, tmp_path / "judge")
    labels = likely_labels(judge_dir)
    model = write_outputs(tmp_path / "model.json", ["12345678", "", "1", "x", "00", "9"], "m")
    args = ["--model_outputs", model, "--reference_outputs", half_gold_reference(tmp_path), "--instructions",
            "pg:sort8/sft", "--max_instructions", str(N), "--judge", f"llm:{judge_dir}", "--judge_labels", labels,
            "--backend", "transformers", "--output_dir", str(tmp_path / "out")]
    metrics = run(args)
    cache = tmp_path / "out" / "annotations.cache.jsonl"
    first = cache_lines(cache)
    annotations = read(tmp_path / "out" / "annotations.json")
    check_llm_annotations(annotations, metrics)

    cache.write_text("\n".join(first[:3]) + "\n")  # killed after judging 3
    (tmp_path / "out" / "annotations.json").unlink()
    # The 3 re-judged examples form a batch of 3, not 6: other padding and matrix shapes move float32 log-probs by
    # ~1e-7, so the metrics agree to a few parts per million, not to the last bit (seen: 2.8e-6 relative).
    assert run(args) == pytest.approx(metrics, rel=1e-5)
    lines = cache_lines(cache)
    assert lines[:3] == first[:3] and len(lines) == N  # only the 3 missing ones were judged again
    assert [a["preference"] for a in read(tmp_path / "out" / "annotations.json")] == pytest.approx(
        [a["preference"] for a in annotations])

    shutil.rmtree(judge_dir)  # all judged: no judge model needed
    assert run(args) == pytest.approx(metrics, rel=1e-5) and cache_lines(cache) == lines


def test_reward_model_judge_end_to_end(tiny_model_dir, tmp_path):
    from posttrain.judges import RewardModelJudge
    from tests.integration.test_winrate_judges import save_tiny_reward_model

    reward = str(save_tiny_reward_model(tiny_model_dir, tmp_path / "rm"))
    model = write_outputs(tmp_path / "model.json", ["12345678", "", "1", "x", "00", "9"], "m")
    run(["--model_outputs", model, "--reference_outputs", half_gold_reference(tmp_path), "--instructions",
         "pg:sort8/sft", "--max_instructions", str(N), "--judge", f"reward:{reward}", "--output_dir",
         str(tmp_path / "out")])
    annotations = read(tmp_path / "out" / "annotations.json")
    expected = RewardModelJudge.from_pretrained(reward).judge(
        [a["instruction"] for a in annotations], [a["output_1"] for a in annotations],
        [a["output_2"] for a in annotations])
    assert [a["preference"] for a in annotations] == pytest.approx(expected)
    assert all(1 < p < 2 for p in expected) and annotations[0]["annotator"] == f"reward:{reward}"


def test_openai_judge_spec_builds_an_llm_judge_on_that_endpoint():
    from argparse import Namespace

    from posttrain.evaluation.winrate_cli import judge_from_spec

    args = Namespace(judge_labels="m,M", judge_seed=7)
    judge = judge_from_spec("llm-openai:http://localhost:8000/v1#judge-model", args, pool=None)
    assert (judge.generator.base_url, judge.generator.model) == ("http://localhost:8000/v1", "judge-model")
    assert (judge.labels, judge.seed, judge.name) == (("m", "M"), 7, "llm-openai:http://localhost:8000/v1#judge-model")


def test_llm_judge_served_by_vllm(tmp_path):
    """The tiny model generates and judges on one vLLM engine (positions widened so the judge prompt fits)."""
    from posttrain.data import tokenizer_corpus
    from posttrain.models import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny-1024", tokenizer_corpus(), seed=0, max_position_embeddings=1024)
    labels, out = likely_labels(model), tmp_path / "out"
    command = [sys.executable, "-m", "posttrain.cli", "eval", "winrate", *generation_args(
        str(model), half_gold_reference(tmp_path), out, judge=f"llm:{model}"), "--judge_labels", labels]
    command[command.index("transformers")] = "vllm"
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read(out / "leaderboard.json")["tiny-1024"]
    assert f'"n_failed": {metrics["n_failed"]}' in done.stdout
    annotations = read(out / "annotations.json")
    check_llm_annotations(annotations, metrics)

    # The same judge on the transformers backend reads the same preferences from the same prompts.
    from posttrain.generation import load_generator
    from posttrain.judges import LLMJudge

    judge = LLMJudge(load_generator(str(model), "transformers"), seed=0, labels=tuple(labels.split(",")))
    again = judge.annotate([a["instruction"] for a in annotations], [a["output_1"] for a in annotations],
                           [a["output_2"] for a in annotations])
    assert [a.swapped for a in again] == [a["swapped"] for a in annotations]
    both = [(x.preference, a["preference"]) for x, a in zip(again, annotations) if not x.failed and a["preference"]]
    assert both and all(math.isclose(x, y, abs_tol=1e-3) for x, y in both)


def likely_labels(judge_dir) -> str:
    """Two alphanumeric tokens the (untrained) judge model ranks high after a judge prompt, so that it yields
    preferences rather than only failures."""
    from posttrain.generation import SamplingParams, load_generator
    from posttrain.judges import LLMJudge

    generator = load_generator(str(judge_dir), "transformers")
    prompts = [LLMJudge(None).prompt(r["instruction"], r["answer"], "") for r in instructions()]
    totals: dict[str, float] = {}
    for completions in generator.generate(prompts, SamplingParams(max_new_tokens=1, logprobs=20)):
        for token, logprob in completions[0].top_logprobs[0].items():
            if token.strip().isalnum():
                totals[token.strip()] = totals.get(token.strip(), 0.0) + math.exp(logprob)
    first, second = sorted(totals, key=totals.get, reverse=True)[:2]
    return f"{first},{second}"


def check_llm_annotations(annotations: list[dict], metrics: dict) -> None:
    assert len(annotations) == N
    failed = [a for a in annotations if a["preference"] is None]
    assert metrics["n_failed"] == len(failed) and metrics["n_total"] == N - len(failed) and len(failed) < N
    for a in annotations:
        assert isinstance(a["swapped"], bool) and a["annotator"].startswith("llm:")
        if a["preference"] is not None:
            p_first, p_second = a["raw"]["p_first"], a["raw"]["p_second"]
            p_model = p_first if a["swapped"] else p_second
            assert a["preference"] == pytest.approx(1 + p_model / (p_first + p_second))
    scored = [a["preference"] for a in annotations]
    assert metrics["win_rate"] == pytest.approx(winrate_metrics(scored)["win_rate"])


@pytest.mark.parametrize("problem, expected", [
    ("missing", "does not exist"),
    ("empty", "is empty"),
    ("not_json", "not valid JSON"),
    ("not_a_list", "JSON list of objects"),
    ("missing_key", "missing key(s) preference"),
    ("bad_preference", "expected a number"),
])
def test_bad_annotations_files_are_one_line_usage_errors(tmp_path, problem, expected):
    path = tmp_path / "annotations.json"
    good = {"instruction": "i", "output_1": "a", "output_2": "b", "preference": 2.0}
    contents = {"empty": "  \n", "not_json": "[{", "not_a_list": json.dumps(good),
                "missing_key": json.dumps([{k: v for k, v in good.items() if k != "preference"}]),
                "bad_preference": json.dumps([{**good, "preference": "two"}])}
    if problem != "missing":
        path.write_text(contents[problem])
    with pytest.raises(UsageError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        run(["--annotations", str(path), "--output_dir", str(tmp_path / "out")])


def test_bad_generation_inputs_are_usage_errors(tmp_path):
    out = ["--output_dir", str(tmp_path / "out")]
    reference = half_gold_reference(tmp_path)
    cases = [
        (["--judge", "oracle:sort8", "--instructions", "pg:sort8/sft"], "unknown judge 'oracle:sort8'"),
        (["--judge", "llm-openai:http://localhost:1/v1", "--instructions", "pg:sort8/sft"], "served model's name"),
        (["--judge", "llm:x", "--judge_labels", "a", "--instructions", "pg:sort8/sft"], "two different labels"),
        (["--judge", "rule:sort99", "--instructions", "pg:sort8/sft"], "unknown proving-ground task"),
        (["--instructions", "pg:sort8/sft"], "pass --judge"),
        (["--judge", "rule:sort8"], "--instructions DATASET"),
        (["--judge", "rule:sort8", "--instructions", "pg:sort8/sft", "--reference_outputs", reference],
         "--model PATH_OR_ID or --model_outputs FILE"),
        (["--judge", "rule:sort8", "--instructions", "pg:sort8/sft", "--max_instructions", "9", "--model_outputs",
          reference, "--reference_outputs", reference], "has no output for 3 instruction(s)"),
        (["--judge", "rule:sort8", "--model_outputs", reference, "--reference_outputs", reference],
         "needs gold answers"),
    ]
    for argv, message in cases:
        with pytest.raises(UsageError) as error:
            run(argv + out)
        assert message in str(error.value), (argv, str(error.value))


def test_cli_exit_code_and_one_line_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--annotations", str(tmp_path / "nope.json"), "--output_dir", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("posttrain: error:") and "does not exist" in err and "\n" not in err
    done = subprocess.run([sys.executable, "-m", "posttrain.cli", "eval", "winrate", "--judge", "bogus",
                           "--output_dir", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown judge 'bogus'" in done.stderr and "Traceback" not in done.stderr
