"""`posttrain generate --revisions` and `posttrain eval winrate --revisions_dir` on the session's tiny model, and
token-id prompts through the transformers backend."""

from __future__ import annotations

import json
import shutil

import pytest

from posttrain.cli import main
from posttrain.generation.cache import prompt_sha
from posttrain.io import read_json, read_jsonl
from posttrain.revision import RevisionTemplate


def test_token_id_prompts_give_the_outputs_of_the_text_prompts_they_encode(tiny_model_dir):
    from posttrain.generation import SamplingParams, TransformersGenerator
    from posttrain.generation.decoding import encode_prompt
    from posttrain.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    generator = TransformersGenerator(load_causal_lm(str(tiny_model_dir)), tokenizer, batch_size=2)
    texts = ["sort 8123", [{"role": "user", "content": "sort 4471"}], "sort 90210 please"]
    ids = [encode_prompt(tokenizer, prompt) for prompt in texts]
    for params in (SamplingParams(max_new_tokens=6), SamplingParams(max_new_tokens=6, temperature=1.0, seed=3)):
        from_text, from_ids = generator.generate(texts, params), generator.generate(ids, params)
        assert [c[0].token_ids for c in from_ids] == [c[0].token_ids for c in from_text]
        assert [c[0].text for c in from_ids] == [c[0].text for c in from_text]


@pytest.fixture
def srpo_run(tiny_model_dir, tmp_path):
    """A folder laid out like a finished SRPO run: the tiny model, run_config.json, report.md and its template."""
    run = tmp_path / "srpo-run"
    shutil.copytree(tiny_model_dir, run)
    (run / "run_config.json").write_text("{}\n")
    (run / "report.md").write_text("# srpo run\n\n## Loss\n\n![loss](loss.png)\n")
    RevisionTemplate("{prompt}\nDraft: {draft}\nBetter:").save(run)
    return run


def test_generate_revisions_then_win_rate_by_revision_into_the_runs_report(srpo_run, tiny_model_dir, tmp_path):
    generated, judged = tmp_path / "gen", tmp_path / "winrate"
    main(["generate", "--model", str(srpo_run), "--prompts", "pg:sort8/sft", "--limit", "3", "--revisions", "2",
          "--max_new_tokens", "6", "--backend", "transformers", "--output_dir", str(generated)])
    revisions = [read_json(generated / f"revision_{k}.json") for k in range(3)]
    assert [len(rows) for rows in revisions] == [3, 3, 3]
    assert all(set(row) == {"instruction", "output", "generator"} for rows in revisions for row in rows)
    assert revisions[0][0]["instruction"].startswith("sort ")

    # Revision k+1 was prompted with the template's token ids around revision k's output (as the trainer builds them).
    from posttrain.generation.revisions import revision_prompt_budget
    from posttrain.models import load_tokenizer

    tokenizer, template = load_tokenizer(str(srpo_run)), RevisionTemplate.load(srpo_run)
    budget = revision_prompt_budget(str(srpo_run), 6)
    for k in (1, 2):
        cached = {r["index"]: r["prompt_sha"] for r in read_jsonl(generated / f"generations.revision_{k}.jsonl")}
        for index, row in enumerate(revisions[k - 1]):
            ids = template.prompt_ids(tokenizer, [{"role": "user", "content": row["instruction"]}], row["output"],
                                      max_tokens=budget)
            assert cached[index] == prompt_sha(ids)

    argv = ["eval", "winrate", "--revisions_dir", str(generated), "--reference", str(tiny_model_dir), "--judge",
            "rule:sort8", "--instructions", "pg:sort8/sft", "--max_instructions", "3", "--max_new_tokens", "6",
            "--backend", "transformers", "--output_dir", str(judged)]
    main(argv)
    summary = json.loads((judged / "winrate_by_revision.json").read_text())
    assert [row["revision"] for row in summary["revisions"]] == [0, 1, 2]
    assert all(row["n_total"] == 3 for row in summary["revisions"])
    assert (judged / "revision_2" / "annotations.json").is_file()
    table = (judged / "winrate_by_revision.md").read_text().splitlines()
    assert len(table) == 2 + 3 and table[0].startswith("| revision | win rate")
    for folder in (judged, srpo_run):
        assert (folder / "winrate_by_revision.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    main(argv)  # a rerun is served by the caches and replaces the report's section
    report = (srpo_run / "report.md").read_text()
    assert report.count("## Win rate by revision") == 1 and report.startswith("# srpo run\n\n## Loss")
    assert "\n".join(table) in report and "![win rate by revision](winrate_by_revision.png)" in report


@pytest.mark.xdist_group("vllm")
def test_vllm_revisions_equal_transformers_revisions(tiny_model_dir, tmp_path):
    """The token-id revision prompts reach vLLM as `TokensPrompt`s: both backends revise to the same tokens."""
    from posttrain.generation import SamplingParams, VLLMGenerator, load_generator
    from posttrain.generation.revisions import generate_revisions
    from posttrain.models import load_tokenizer

    tokenizer, template = load_tokenizer(str(tiny_model_dir)), RevisionTemplate("{prompt}\nDraft: {draft}\nBetter:")
    prompts = ["sort 8123", [{"role": "user", "content": "sort 4471"}]]
    params = SamplingParams(max_new_tokens=6)
    hf = load_generator(str(tiny_model_dir), backend="transformers")
    vllm = VLLMGenerator(str(tiny_model_dir), max_model_len=256, enforce_eager=True, show_progress=False)
    try:
        outputs = {name: generate_revisions(generator, prompts, template, tokenizer, params, 2, tmp_path / name,
                                            progress=False)
                   for name, generator in (("hf", hf), ("vllm", vllm))}
    finally:
        vllm.close()
    assert outputs["vllm"] == outputs["hf"]
    for k in (1, 2):
        hf_ids, vllm_ids = ([r["completions"][0]["token_ids"]
                             for r in read_jsonl(tmp_path / name / f"generations.revision_{k}.jsonl")]
                            for name in ("hf", "vllm"))
        assert vllm_ids == hf_ids
