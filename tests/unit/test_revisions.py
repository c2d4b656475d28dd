"""The n-revision loop (posttrain.generation.revisions) with a fake generator, token-id prompts in the generation
types and cache, the `posttrain generate` input readers, and the win-rate-by-revision table and report section."""

from __future__ import annotations

import json

import pytest

from posttrain.errors import UsageError
from posttrain.evaluation.winrate_revisions import add_report_section, revision_outputs, table_lines
from posttrain.generation.cache import prompt_sha
from posttrain.generation.decoding import encode_prompt
from posttrain.generation.generate_cli import load_template, read_prompts
from posttrain.generation.revisions import generate_revisions, revision_prompts
from posttrain.generation.types import Completion, SamplingParams, is_token_ids
from posttrain.io import read_json
from posttrain.revision import RevisionTemplate

TEMPLATE = RevisionTemplate("{prompt} || draft: {draft}")
PROMPTS = ["sort 31", "sort 952", "sort 7"]


class FakeGenerator:
    """Answers each prompt with `<round>:<prompt length>` (the round is how many drafts the prompt holds), records
    the prompts it was given, and stops after `fail_after` results when set (a killed run)."""

    def __init__(self, model_id: str = "fake", fail_after: int | None = None):
        self.model_id, self.fail_after, self.seen = model_id, fail_after, []

    def generate(self, prompts, params, on_result=None):
        results = []
        for index, prompt in enumerate(prompts):
            if self.fail_after is not None and len(self.seen) == self.fail_after:
                raise KeyboardInterrupt
            self.seen.append(prompt)
            text = f"{str(prompt).count('draft:')}:{len(str(prompt))}"
            results.append([Completion(index, text)])
            if on_result is not None:
                on_result(index, results[-1])
        return results


def run(generator, output_dir, revisions=2, **options):
    return generate_revisions(generator, PROMPTS, TEMPLATE, None, SamplingParams(max_new_tokens=4), revisions,
                              output_dir, name="fake-model", token_ids=False, **options)


def test_each_revision_prompts_with_the_template_around_the_previous_output(tmp_path):
    generator = FakeGenerator()
    outputs = run(generator, tmp_path)
    assert len(outputs) == 3
    assert generator.seen[:3] == PROMPTS
    for revision in (1, 2):
        expected = [TEMPLATE.render(p, draft) for p, draft in zip(PROMPTS, outputs[revision - 1])]
        assert generator.seen[3 * revision:3 * revision + 3] == expected
    for revision, texts in enumerate(outputs):
        rows = read_json(tmp_path / f"revision_{revision}.json")
        assert rows == [{"instruction": p, "output": t, "generator": "fake-model"} for p, t in zip(PROMPTS, texts)]
    manifest = read_json(tmp_path / "revisions.json")
    assert manifest["revisions"] == 2 and manifest["revision_template"] == TEMPLATE.text


def test_a_killed_run_resumes_mid_revision_and_regenerates_nothing_finished(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(FakeGenerator(fail_after=5), tmp_path)  # all of revision 0, two prompts of revision 1
    assert (tmp_path / "revision_0.json").is_file() and not (tmp_path / "revision_1.json").exists()
    resumed = FakeGenerator()
    outputs = run(resumed, tmp_path)
    assert len(resumed.seen) == 1 + 3  # the last prompt of revision 1, then revision 2
    assert outputs == run(FakeGenerator(), tmp_path / "uninterrupted")
    again = FakeGenerator()
    assert run(again, tmp_path) == outputs and again.seen == []


def test_token_id_prompts_are_the_templates_ids_within_the_budget_except_for_openai_servers(tmp_path):
    class IdTemplate:
        text = "{prompt}{draft}"

        def prompt_ids(self, tokenizer, prompt, draft, max_tokens=None, fix=None):
            return [len(prompt), len(draft), max_tokens]

        def render(self, prompt, draft):
            return f"{prompt}+{draft}"

    local, server = FakeGenerator("transformers:m"), FakeGenerator("openai:http://x:m")
    for generator, folder in ((local, "local"), (server, "server")):
        generate_revisions(generator, PROMPTS, IdTemplate(), None, SamplingParams(), 1, tmp_path / folder,
                           max_prompt_tokens=50)
    assert local.seen[3:] == [[len(p), len(f"0:{len(p)}"), 50] for p in PROMPTS]
    assert server.seen[3:] == [f"{p}+0:{len(p)}" for p in PROMPTS]


def test_revisions_need_a_template_one_sample_and_a_non_negative_count(tmp_path):
    with pytest.raises(UsageError, match="revision template"):
        generate_revisions(FakeGenerator(), PROMPTS, None, None, SamplingParams(), 1, tmp_path)
    with pytest.raises(UsageError, match="n=1"):
        generate_revisions(FakeGenerator(), PROMPTS, TEMPLATE, None, SamplingParams(n=2), 1, tmp_path)
    with pytest.raises(UsageError, match=">= 0"):
        generate_revisions(FakeGenerator(), PROMPTS, TEMPLATE, None, SamplingParams(), -1, tmp_path)

    class TooLong:
        def prompt_ids(self, tokenizer, prompt, draft, max_tokens=None, fix=None):
            raise UsageError(f"the revision template alone takes more than {max_tokens} tokens; {fix}")

    generator = FakeGenerator("transformers:m")
    with pytest.raises(UsageError, match="more than 9 tokens; lower max_new_tokens"):
        generate_revisions(generator, PROMPTS, TooLong(), None, SamplingParams(), 1, tmp_path, max_prompt_tokens=9)
    assert generator.seen == [] and not any(tmp_path.iterdir())


def test_revision_prompts_of_chat_messages_render_the_last_user_message():
    chat = [{"role": "user", "content": "sort 31"}]
    assert revision_prompts(TEMPLATE, None, [chat], ["13"], token_ids=False) == \
        [[{"role": "user", "content": "sort 31 || draft: 13"}]]


def test_token_ids_pass_through_encoding_and_hash_apart_from_text():
    assert is_token_ids([5, 6]) and not is_token_ids([]) and not is_token_ids("56") and not is_token_ids([True])
    assert not is_token_ids([{"role": "user", "content": "x"}])
    assert encode_prompt(None, [5, 6, 7]) == [5, 6, 7]
    assert prompt_sha([5, 6]) != prompt_sha("[5, 6]") and prompt_sha([5, 6]) == prompt_sha((5, 6))


def test_prompts_file_rows_become_chat_instructions_or_prompts_as_given(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"sort {d}"}) + "\n" for d in (31, 952)))
    assert read_prompts(str(path), None, 1) == [[{"role": "user", "content": "sort 31"}]]
    path.write_text(json.dumps({"prompt": "sort 31"}) + "\n")
    assert read_prompts(str(path), None, None) == ["sort 31"]
    path.write_text(json.dumps({"text": "sort 31"}) + "\n")
    with pytest.raises(UsageError, match="--prompts .* needs a 'prompt' or 'instruction' column"):
        read_prompts(str(path), None, None)


def test_revision_template_comes_from_text_a_json_file_a_folder_or_the_model(tmp_path):
    assert load_template("{prompt} fix: {draft}", "unused").text == "{prompt} fix: {draft}"
    (tmp_path / "t.json").write_text(json.dumps({"text": "{prompt} / {draft}"}))
    assert load_template(str(tmp_path / "t.json"), "unused").text == "{prompt} / {draft}"
    TEMPLATE.save(tmp_path)
    assert load_template(str(tmp_path), "unused") == TEMPLATE
    assert load_template(None, str(tmp_path)) == TEMPLATE
    with pytest.raises(UsageError, match="pass --revision_template.*SRPO"):
        load_template(None, str(tmp_path / "t.json"))
    with pytest.raises(UsageError, match=r"\{draft\}"):
        load_template("only {prompt}", "unused")


def test_revision_outputs_follow_the_manifest_and_refuse_an_unfinished_run(tmp_path):
    for k in (0, 1, 10):
        (tmp_path / f"revision_{k}.json").write_text("[]")
    assert [k for k, _ in revision_outputs(str(tmp_path))[0]] == [0, 1, 10]
    (tmp_path / "revisions.json").write_text(json.dumps({"revisions": 2}))
    with pytest.raises(UsageError, match="revision_2.json.*rerun"):
        revision_outputs(str(tmp_path))


def test_table_has_a_row_per_revision_and_the_report_section_is_replaced_not_repeated(tmp_path):
    row = {"win_rate": 62.5, "standard_error": 4.0, "n_wins": 5, "n_wins_base": 3, "n_draws": 0, "n_failed": 0,
           "n_total": 8}
    lines = table_lines({"revisions": [{"revision": 0, **row}, {"revision": 1, **row, "standard_error": None}]})
    assert lines[2] == "| 0 | 62.5 | 4.0 | 5 | 3 | 0 | 0 | 8 |" and lines[3].startswith("| 1 | 62.5 |  |")
    report = tmp_path / "report.md"
    report.write_text("# run\n\n## Loss\n\n![loss](loss.png)\n")
    add_report_section(report, "## Win rate by revision\n\nold")
    add_report_section(report, "## Win rate by revision\n\nnew")
    text = report.read_text()
    assert text.count("## Win rate by revision") == 1 and "new" in text and "old" not in text
    assert text.startswith("# run\n\n## Loss\n\n![loss](loss.png)\n")
