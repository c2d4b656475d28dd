"""The SRPO revision template: one object, saved with the model, that training and inference both use
(docs/methods.md §2).

The self-improver sees the prompt x and a draft y inside a fixed template T(x, y). `RevisionTemplate.prompt_ids`
is the single way to turn (x, y) into token ids, so the tokens a model is trained on are the tokens it is prompted
with when it revises. The ids are assembled from separately tokenised pieces, head | prompt | middle | draft | tail,
so that a length budget cuts the draft first (keeping its start), then the prompt (keeping its end), and never the
template's own words.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import UsageError

PROMPT_SLOT, DRAFT_SLOT = "{prompt}", "{draft}"
TEMPLATE_FILE = "revision_template.json"

# Kept short, as its tokens are paid in four of the six sequences of every pair (on the toy's character-level
# tokenizer it takes 27 tokens, so sort8's revision sequences fit max_length 64 whole), and on one line, so that
# recipe help and starter recipes show it as one YAML value.
DEFAULT_REVISION_TEMPLATE = "{prompt} Draft: {draft} Improve the draft."

# Stand-ins for the prompt and the draft while the chat template renders; only the text around them is tokenised.
_PROMPT_MARK, _DRAFT_MARK = "\x00posttrain-revision-prompt\x00", "\x00posttrain-revision-draft\x00"


def template_problem(text) -> str | None:
    """What is wrong with a revision template's text, or None when it is usable."""
    if not isinstance(text, str):
        return f"must be a string, got {type(text).__name__}"
    for slot in (PROMPT_SLOT, DRAFT_SLOT):
        if text.count(slot) != 1:
            return f"must contain {slot} exactly once (found {text.count(slot)})"
    if text.index(PROMPT_SLOT) > text.index(DRAFT_SLOT):
        return f"must place {PROMPT_SLOT} before {DRAFT_SLOT}"
    return None


def completion_text(completion, eos_token: str | None = None) -> str:
    """A completion as draft text: a string without a trailing EOS, or the joined contents of chat messages."""
    if isinstance(completion, str):
        return completion.removesuffix(eos_token) if eos_token else completion
    if isinstance(completion, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                            for m in completion):
        return "".join(m["content"] for m in completion)
    raise UsageError(f"a completion must be a string or a list of chat messages with string content, got "
                     f"{type(completion).__name__}")


def _last_user_index(messages: list) -> int:
    for index in range(len(messages) - 1, -1, -1):
        if isinstance(messages[index], dict) and messages[index].get("role") == "user":
            return index
    raise UsageError("a chat prompt for revision needs a user message; none was found")


def _check_prompt(prompt) -> None:
    if isinstance(prompt, str):
        return
    if not isinstance(prompt, list) or not all(isinstance(m, dict) for m in prompt):
        raise UsageError(f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}")


def _ids(tokenizer, text: str, special: bool = False) -> list[int]:
    """`text`'s token ids; `special` adds the tokenizer's special tokens (BOS) as for a whole plain prompt."""
    return list(tokenizer(text, add_special_tokens=special)["input_ids"]) if text or special else []


def _cut(prompt: list[int], draft: list[int], room: int) -> tuple[list[int], list[int]]:
    """Fit prompt + draft into `room` tokens: the draft's end goes first, then the prompt's start."""
    draft = draft[:max(0, room - len(prompt))]
    keep = max(0, room - len(draft))
    return prompt[max(0, len(prompt) - keep):], draft


@dataclass(frozen=True)
class RevisionTemplate:
    """T(x, y): `text` with `{prompt}` then `{draft}`, each exactly once."""

    text: str = DEFAULT_REVISION_TEMPLATE

    def __post_init__(self):
        problem = template_problem(self.text)
        if problem:
            raise ValueError(f"revision_template {problem}")

    @property
    def pieces(self) -> tuple[str, str, str]:
        """(head, middle, tail): the template's text before the prompt, between prompt and draft, after the draft."""
        head, rest = self.text.split(PROMPT_SLOT)
        middle, tail = rest.split(DRAFT_SLOT)
        return head, middle, tail

    def render(self, prompt, draft: str):
        """T(prompt, draft) as text, or for chat messages a copy whose LAST user message's content is rendered."""
        _check_prompt(prompt)
        head, middle, tail = self.pieces
        if isinstance(prompt, str):
            return head + prompt + middle + draft + tail
        index = _last_user_index(prompt)
        messages = [dict(m) for m in prompt]
        messages[index]["content"] = self.render(messages[index]["content"], draft)
        return messages

    def _frame(self, tokenizer, prompt) -> tuple[str, str, str, str, bool]:
        """(head, prompt text, middle, tail, head gets special tokens) of the whole revision prompt's text."""
        if isinstance(prompt, str):
            head, middle, tail = self.pieces
            return head, prompt, middle, tail, True
        index = _last_user_index(prompt)
        content = prompt[index].get("content")
        if not isinstance(content, str):
            raise UsageError(f"the last user message's content must be a string, got {type(content).__name__}")
        messages = [dict(m) for m in prompt]
        messages[index]["content"] = self.render(_PROMPT_MARK, _DRAFT_MARK)
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if rendered.count(_PROMPT_MARK) != 1 or rendered.count(_DRAFT_MARK) != 1:
            raise UsageError("the tokenizer's chat template does not render the user message's content verbatim, "
                             "so the revision prompt cannot be built; use a chat template that keeps the content")
        head, rest = rendered.split(_PROMPT_MARK)
        middle, tail = rest.split(_DRAFT_MARK)
        return head, content, middle, tail, False

    def _frame_ids(self, tokenizer, prompt) -> tuple[list[int], str, list[int], list[int]]:
        """(head ids, prompt text, middle ids, tail ids): the template's pieces tokenised, around this prompt."""
        _check_prompt(prompt)
        head, prompt_text, middle, tail, specials = self._frame(tokenizer, prompt)
        return _ids(tokenizer, head, specials), prompt_text, _ids(tokenizer, middle), _ids(tokenizer, tail)

    def template_length(self, tokenizer, prompt) -> int:
        """Tokens the template itself (chat template included) takes around `prompt`: the least `max_tokens`."""
        head_ids, _, middle_ids, tail_ids = self._frame_ids(tokenizer, prompt)
        return len(head_ids) + len(middle_ids) + len(tail_ids)

    def prompt_ids(self, tokenizer, prompt, draft: str, max_tokens: int | None = None, *,
                   fix: str = "shorten the revision template") -> list[int]:
        """Token ids of the revision prompt (chat template and generation prompt included for chat prompts), at
        most `max_tokens` long: the draft is cut first (its start kept), then the prompt (its end kept). When the
        template alone takes more, a one-line `UsageError` ending in `fix`, the caller's remedy."""
        if not isinstance(draft, str):
            raise UsageError(f"a revision draft must be a string, got {type(draft).__name__}")
        head_ids, prompt_text, middle_ids, tail_ids = self._frame_ids(tokenizer, prompt)
        prompt_ids, draft_ids = _ids(tokenizer, prompt_text), _ids(tokenizer, draft)
        if max_tokens is not None:
            fixed = len(head_ids) + len(middle_ids) + len(tail_ids)
            if fixed > max_tokens:
                raise UsageError(f"the revision template alone takes {fixed} tokens, more than the {max_tokens} "
                                 f"available; {fix}")
            prompt_ids, draft_ids = _cut(prompt_ids, draft_ids, max_tokens - fixed)
        return head_ids + prompt_ids + middle_ids + draft_ids + tail_ids

    def save(self, directory) -> None:
        """Write `<directory>/revision_template.json` atomically."""
        from posttrain.io import atomic_write_json

        atomic_write_json(Path(directory) / TEMPLATE_FILE, {"text": self.text})

    @classmethod
    def load(cls, directory) -> RevisionTemplate | None:
        """The template saved in `directory`, or None when there is none."""
        import json

        path = Path(directory) / TEMPLATE_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(data["text"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
            raise UsageError(f"{path} is not a usable revision template ({str(err).splitlines()[0]}); write it "
                             f"again as {{\"text\": \"... {PROMPT_SLOT} ... {DRAFT_SLOT} ...\"}}") from None
