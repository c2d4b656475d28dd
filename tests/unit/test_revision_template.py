"""RevisionTemplate: validation, rendering, token ids equal to the rendered prompt's, truncation order, save/load."""

from __future__ import annotations

import pytest

from posttrain.errors import UsageError
from posttrain.generation.decoding import encode_prompt
from posttrain.revision import DEFAULT_REVISION_TEMPLATE, RevisionTemplate, completion_text

TEMPLATE = RevisionTemplate("Q: {prompt}|D: {draft}|A:")
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "sort 3120"},
        {"role": "assistant", "content": "0123"}, {"role": "user", "content": "sort 9875"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from posttrain.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def test_default_template_is_valid():
    assert RevisionTemplate().text == DEFAULT_REVISION_TEMPLATE


@pytest.mark.parametrize(("text", "message"), [
    ("no slots", r"must contain \{prompt\} exactly once \(found 0\)"),
    ("{prompt} {prompt} {draft}", r"must contain \{prompt\} exactly once \(found 2\)"),
    ("{prompt} only", r"must contain \{draft\} exactly once"),
    ("{draft} {prompt}", r"must place \{prompt\} before \{draft\}"),
    (3, "must be a string, got int"),
])
def test_bad_templates_are_one_line_value_errors(text, message):
    with pytest.raises(ValueError, match=message):
        RevisionTemplate(text)


def test_render_fills_a_string_and_the_last_user_message_of_a_chat():
    assert TEMPLATE.render("sort {x}", "1 {y}") == "Q: sort {x}|D: 1 {y}|A:"  # braces in the text are kept
    rendered = TEMPLATE.render(CHAT, "5789")
    assert rendered[-1] == {"role": "user", "content": "Q: sort 9875|D: 5789|A:"}
    assert rendered[:3] == CHAT[:3] and CHAT[-1]["content"] == "sort 9875"  # the input is not changed


def test_render_of_a_chat_without_a_user_message_is_a_usage_error():
    with pytest.raises(UsageError, match="needs a user message"):
        TEMPLATE.render([{"role": "system", "content": "x"}], "d")


@pytest.mark.parametrize("prompt", ["sort 9875", CHAT], ids=["plain", "chat"])
def test_prompt_ids_are_the_rendered_prompts_ids(tokenizer, prompt):
    # The pieces are tokenised apart; on this tokenizer that gives the same ids as the whole rendered prompt.
    assert TEMPLATE.prompt_ids(tokenizer, prompt, "5789") == encode_prompt(tokenizer, TEMPLATE.render(prompt, "5789"))


def test_over_budget_the_draft_is_cut_first_keeping_its_start_then_the_prompt_keeping_its_end(tokenizer):
    draft, prompt = "0123456789", [{"role": "user", "content": "abcdefghij"}]
    fixed = TEMPLATE.template_length(tokenizer, prompt)
    pieces = {n: len(tokenizer(t, add_special_tokens=False)["input_ids"]) for n, t in [("p", "abcdefghij"),
                                                                                       ("d", draft)]}
    whole = TEMPLATE.prompt_ids(tokenizer, prompt, draft)
    assert len(whole) == fixed + pieces["p"] + pieces["d"]
    assert TEMPLATE.prompt_ids(tokenizer, prompt, draft, max_tokens=len(whole)) == whole

    def text(max_tokens: int) -> str:
        return tokenizer.decode(TEMPLATE.prompt_ids(tokenizer, prompt, draft, max_tokens=max_tokens))

    assert "|D: 012|A:" in text(fixed + pieces["p"] + 3) and "Q: abcdefghij|" in text(fixed + pieces["p"] + 3)
    assert "Q: hij|D: |A:" in text(fixed + 3)
    assert "Q: |D: |A:" in text(fixed)
    assert len(TEMPLATE.prompt_ids(tokenizer, prompt, draft, max_tokens=fixed + 3)) == fixed + 3


def test_a_budget_smaller_than_the_template_is_a_usage_error(tokenizer):
    fixed = TEMPLATE.template_length(tokenizer, "p")
    with pytest.raises(UsageError, match=f"the revision template alone takes {fixed} tokens"):
        TEMPLATE.prompt_ids(tokenizer, "p", "d", max_tokens=fixed - 1)
    with pytest.raises(UsageError, match=f"more than the {fixed - 1} available; lower max_new_tokens$"):
        TEMPLATE.prompt_ids(tokenizer, "p", "d", max_tokens=fixed - 1, fix="lower max_new_tokens")


def test_a_chat_template_that_does_not_keep_the_content_is_a_usage_error(tokenizer):
    class Trimming:
        def apply_chat_template(self, messages, **kwargs):
            return messages[-1]["content"].upper()

    with pytest.raises(UsageError, match="does not render the user message's content verbatim"):
        TEMPLATE.prompt_ids(Trimming(), CHAT, "d")


def test_wrong_types_are_usage_errors(tokenizer):
    with pytest.raises(UsageError, match="a revision draft must be a string, got int"):
        TEMPLATE.prompt_ids(tokenizer, "p", 5)
    with pytest.raises(UsageError, match="a prompt must be a string or a list of chat messages, got dict"):
        TEMPLATE.prompt_ids(tokenizer, {"role": "user"}, "d")


def test_completion_text_strips_eos_and_joins_messages():
    assert completion_text("0123</s>", "</s>") == "0123"
    assert completion_text([{"role": "assistant", "content": "01"}, {"role": "assistant", "content": "23"}]) == "0123"
    with pytest.raises(UsageError, match="a completion must be a string or a list of chat messages"):
        completion_text([{"role": "assistant", "content": None}])


def test_save_and_load_round_trip(tmp_path):
    assert RevisionTemplate.load(tmp_path) is None
    TEMPLATE.save(tmp_path)
    assert RevisionTemplate.load(tmp_path) == TEMPLATE


@pytest.mark.parametrize("content", ["not json", '{"other": 1}', '{"text": "no slots"}', "[1]"])
def test_loading_a_damaged_file_is_a_usage_error(tmp_path, content):
    (tmp_path / "revision_template.json").write_text(content)
    with pytest.raises(UsageError, match="is not a usable revision template"):
        RevisionTemplate.load(tmp_path)
