"""MMLU on the tiny model: per-question parity with lm-evaluation-harness's HF backend (prompts, log-likelihoods,
predictions) for 0-shot, 5-shot and 5-shot with the chat template; the vLLM backend against the transformers one;
the CLI's output files and resuming an interrupted run; `evaluate_mmlu`, the programmatic entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.errors import UsageError
from posttrain.evaluation import mmlu
from posttrain.evaluation.loglikelihood import TransformersScorer
from posttrain.evaluation.mmlu_cli import main
from posttrain.io import read_jsonl

FIXTURE = str(Path(__file__).resolve().parents[1] / "fixtures" / "mmlu")
SUBJECTS = ["abstract_algebra", "global_facts", "world_religions"]
TOLERANCE = 1e-4  # float32 on both sides; observed differences are ~1e-6


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from posttrain.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from posttrain.models import load_causal_lm

    return load_causal_lm(str(tiny_model_dir), dtype="float32")


def _evaluate(scorer, fmt: mmlu.PromptFormat, limit: int, **options) -> list[dict]:
    return mmlu.score_subjects(scorer, mmlu.load_subjects(FIXTURE, SUBJECTS, limit, fmt.num_fewshot), fmt, **options)


def _assert_same_scores(ours: list[dict], reference: dict[tuple[str, int], dict]) -> None:
    assert len(ours) == len(reference)
    for record in ours:
        expected = reference[(record["subject"], record["index"])]
        assert record["prediction"] == expected["prediction"], record
        assert record["answer"] == expected["answer"]
        assert record["loglikelihoods"] == pytest.approx(expected["loglikelihoods"], abs=TOLERANCE)


@pytest.mark.parametrize("num_fewshot, chat", [(0, False), (5, False), (5, True)],
                         ids=["0-shot", "5-shot", "5-shot-chat"])
def test_matches_lm_eval_hf_backend(tiny_model_dir, tokenizer, model, tmp_path, num_fewshot, chat):
    from posttrain.evaluation.mmlu_reference import run_lm_eval

    limit = 8
    reference = run_lm_eval(str(tiny_model_dir), FIXTURE, SUBJECTS, tmp_path / "lm_eval", num_fewshot, limit,
                            batch_size=16, apply_chat_template=chat)
    fmt = mmlu.PromptFormat(num_fewshot, tokenizer if chat else None, multiturn=True)
    for subject in SUBJECTS:  # the exact (context, continuation) pairs lm-eval scored
        shots = mmlu.fewshot_examples(FIXTURE, subject, num_fewshot)
        for q in mmlu.load_split(FIXTURE, subject, "test")[:limit]:
            expected = reference["questions"][(subject, q.index)]["requests"]
            assert [(fmt.context(q, shots), c) for c in fmt.continuations()] == expected

    records = _evaluate(TransformersScorer(model, tokenizer, batch_size=7), fmt, limit)
    _assert_same_scores(records, reference["questions"])
    accuracy = mmlu.aggregate(records)["subjects"]
    assert {s: accuracy[s]["acc"] for s in SUBJECTS} == pytest.approx(reference["acc"])
    truncated = sum(r["truncated"] for r in records)
    assert 0 < truncated <= len(records)  # byte-level BPE: long prompts exceed the 256 positions; lm-eval cuts too
    if num_fewshot == 0:
        assert truncated < len(records)  # and short ones are scored whole


def test_vllm_backend_matches_transformers(tiny_model_dir, tokenizer, model):
    from posttrain.evaluation.loglikelihood import VLLMScorer

    vllm_scorer = VLLMScorer(str(tiny_model_dir), tokenizer)
    try:
        # the engine holds max_model_len = 256 positions: the input plus one generated token
        assert vllm_scorer.max_length == 255
        hf_scorer = TransformersScorer(model, tokenizer, batch_size=8, max_length=vllm_scorer.max_length)
        for num_fewshot in (0, 5):
            fmt = mmlu.PromptFormat(num_fewshot)
            ours = _evaluate(vllm_scorer, fmt, 3)
            theirs = _evaluate(hf_scorer, fmt, 3)
            assert [r["prediction"] for r in ours] == [r["prediction"] for r in theirs]
            for a, b in zip(ours, theirs):
                assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=TOLERANCE)
        # multi-token continuations (prompt log-probs), an empty context, and a request sharing another's input
        requests = [("The answer is", " paralysis of the facial muscles"), ("", "Answer:"),
                    ("The answer is", " p"), ("The answer is p", "a")]
        assert vllm_scorer.score_continuations(requests) == pytest.approx(
            hf_scorer.score_continuations(requests), abs=TOLERANCE)
    finally:
        vllm_scorer.close()


def test_interrupted_scoring_resumes_without_rescoring(tokenizer, model, tmp_path):
    scorer = TransformersScorer(model, tokenizer, batch_size=4)
    fmt = mmlu.PromptFormat(5)
    full = _evaluate(scorer, fmt, 3)
    saved: list[dict] = []

    def killed_after_three_chunks(records):  # chunks of 2 and 1 per subject: 2, 3, 5 questions saved
        saved.extend(records)
        if len(saved) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _evaluate(scorer, fmt, 3, on_records=killed_after_three_chunks, chunk_size=2)
    rescored: list[dict] = []
    resumed = _evaluate(scorer, fmt, 3, done=saved, on_records=rescored.extend, chunk_size=2)
    assert len(rescored) == 9 - 5
    assert {(r["subject"], r["index"]) for r in rescored}.isdisjoint({(r["subject"], r["index"]) for r in saved})
    assert [r["prediction"] for r in resumed] == [r["prediction"] for r in full]
    for a, b in zip(resumed, full):
        assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-5)


def test_cli_writes_results_and_resumes(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--model", str(tiny_model_dir), "--data", FIXTURE, "--limit", "3", "--num_fewshot", "5",
            "--backend", "transformers", "--output_dir", str(out)]
    main([*base, "--subjects", "global_facts"])
    with (out / "scored.jsonl").open("a") as handle:  # a kill mid-write leaves a torn line behind
        handle.write('{"subject": "world_rel')
    main(base)
    assert "MMLU 5-shot, 9 questions" in capsys.readouterr().out

    scored = [(r["subject"], r["index"]) for r in read_jsonl(out / "scored.jsonl")]
    assert len(scored) == len(set(scored)) == 9  # global_facts was not scored twice
    predictions = list(read_jsonl(out / "predictions.jsonl"))
    assert [(r["subject"], r["index"]) for r in predictions] == [(s, i) for s in SUBJECTS for i in range(3)]
    results = json.loads((out / "results.json").read_text())
    config = results["config"]
    assert (config["num_fewshot"], config["chat_template"], config["backend"], config["max_length"]) == (
        5, None, "transformers", 256)
    assert results["overall"]["n"] == 9
    assert results["overall"]["correct"] == sum(r["correct"] for r in predictions)
    assert set(results["categories"]) == {"stem", "other", "humanities"}
    assert results["truncated_questions"] == 9

    with pytest.raises(SystemExit):  # the same folder with other settings is refused, not mixed
        main([*base[:-2], "--output_dir", str(out), "--apply_chat_template"])
    chat_out = tmp_path / "chat"
    main([*base[:-2], "--output_dir", str(chat_out), "--apply_chat_template", "--fewshot_as_multiturn", "false"])
    chat_config = json.loads((chat_out / "results.json").read_text())["config"]
    assert chat_config["apply_chat_template"] and not chat_config["fewshot_as_multiturn"]
    assert chat_config["chat_template"].startswith("{{ bos_token }}")


def test_evaluate_mmlu_returns_what_the_cli_writes(tiny_model_dir, tokenizer, model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = mmlu.evaluate_mmlu(str(tiny_model_dir), FIXTURE, num_fewshot=2, limit=3, backend="transformers")
    assert list(tmp_path.iterdir()) == []  # without output_dir nothing is written
    records = _evaluate(TransformersScorer(model, tokenizer), mmlu.PromptFormat(2), 3)
    assert {k: results[k] for k in ("overall", "categories", "subjects")} == mmlu.aggregate(records)
    config = results["config"]
    assert (config["backend"], config["subjects"], config["limit"], config["num_fewshot"], config["max_length"]) == (
        "transformers", SUBJECTS, 3, 2, 256)
    assert results["truncated_questions"] == sum(r["truncated"] for r in records)

    out = tmp_path / "cli"
    main(["--model", str(tiny_model_dir), "--data", FIXTURE, "--num_fewshot", "2", "--limit", "3", "--backend",
          "transformers", "--output_dir", str(out)])
    written = json.loads((out / "results.json").read_text())
    assert {k: v for k, v in written.items() if k != "seconds"} == {k: v for k, v in results.items() if k != "seconds"}
    with pytest.raises(UsageError, match="--limit must be a positive integer"):
        mmlu.evaluate_mmlu(str(tiny_model_dir), FIXTURE, limit=0)
