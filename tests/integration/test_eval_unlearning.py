"""`posttrain eval unlearning` end to end: the tiny model on the committed LUME excerpt, and a hand-scored
generations file (docs/methods.md §5.3)."""

import json

import pytest

from posttrain.cli import main
from tests.conftest import REPO

LUME = REPO / "tests" / "fixtures" / "lume"


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_tiny_model_on_the_lume_excerpt(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "unlearning", "--model", str(tiny_model_dir), "--data", str(LUME), "--backend", "transformers",
            "--max_new_tokens", "4", "--max_prompt_tokens", "200", "--output_dir", str(out)]
    main(argv + ["--mia_nonmembers", str(LUME / "mia_nonmembers.jsonl"), "--mmlu_data",
                 str(REPO / "tests" / "fixtures" / "mmlu"), "--mmlu_subjects", "global_facts", "--mmlu_limit", "2"])
    printed = capsys.readouterr().out
    assert "| Task1 |" in printed and "| final |" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"Task1", "Task2", "Task3"} and len(results["aggregate"]["numbers"]) == 12
    assert results["mia"]["n_members"] == 24 and results["mia"]["n_nonmembers"] == 8
    assert results["final"] == pytest.approx((results["aggregate"]["value"] + results["mia"]["score"]
                                              + results["mmlu"]["acc"]) / 3)
    assert results["settings"]["decoding"]["truncated_prompts"] > 0
    assert len((out / "generations.jsonl").read_text().splitlines()) == 160
    # a rerun takes every output from the generation cache
    main(argv + ["--skip_mia", "--skip_mmlu"])
    assert "reused 160 cached generations" in capsys.readouterr().out


def test_generations_file_scored_by_hand(tmp_path):
    forget = _write_jsonl(tmp_path / "forget.jsonl", [
        {"id": "d1sc1", "input": "Once", "output": "The dogs were running", "task": "Task1"},
        {"id": "d1qa0", "input": "Capital?", "output": "Paris", "task": "Task1"},
        {"id": "d2qa0", "input": "Year?", "output": "1990", "task": "Task1"}])
    retain = _write_jsonl(tmp_path / "retain.jsonl", [
        {"id": "d3sc1", "input": "Then", "output": "alpha beta gamma delta", "task": "Task1"},
        {"id": "d3qa0", "input": "City?", "output": "Rome", "task": "Task1"}])
    generations = tmp_path / "generations.json"  # the JSON-list form
    generations.write_text(json.dumps([{"id": "d1sc1", "output": "dog running"}, {"id": "d1qa0", "output": " paris "},
                                       {"id": "d2qa0", "output": "1991"}, {"id": "d3sc1", "output": "alpha beta"},
                                       {"id": "d3qa0", "output": "Rome"}]))
    main(["eval", "unlearning", "--forget", forget, "--retain", retain, "--generations", str(generations),
          "--mmlu_score", "0.4", "--output_dir", str(tmp_path / "out")])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    # forget: ROUGE-L recall 2/4 (stemmed), exact match (1 + 0) / 2; retain: recall 2/4, exact match 1
    assert results["tasks"]["Task1"]["forget"] == {"regurgitation": 0.5, "n_sc": 1, "knowledge": 0.5, "n_qa": 2}
    assert results["tasks"]["Task1"]["retain"] == {"regurgitation": 0.5, "n_sc": 1, "knowledge": 1.0, "n_qa": 1}
    # harmonic mean of 1 - 0.5, 1 - 0.5, 0.5, 1.0
    assert results["aggregate"]["value"] == pytest.approx(4 / 7)
    assert results["mmlu"]["acc"] == 0.4 and results["mia"] is None
    assert results["final"] is None and results["missing"] == ["mia"]
    assert "no --model" in (tmp_path / "out" / "results.md").read_text()


def test_document_nll_is_the_causal_lm_loss(tiny_model_dir):
    import torch

    from posttrain.evaluation.loglikelihood import TransformersScorer
    from posttrain.evaluation.unlearning import document_nll
    from posttrain.models import load_causal_lm, load_tokenizer

    model, tokenizer = load_causal_lm(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    documents = ["Vorel Tamsin lives in Pradu.", "Kavo Relan works as a baker. Born in 1950."]
    nll, truncated = document_nll(TransformersScorer(model, tokenizer, batch_size=2), documents)
    for document, value in zip(documents, nll):
        ids = torch.tensor([tokenizer(document)["input_ids"]])
        with torch.no_grad():
            assert value == pytest.approx(model(input_ids=ids, labels=ids).loss.item(), rel=1e-4)
    assert truncated == 0
