"""n-revision inference (SRPO, docs/methods.md §2): y_0 ~ π(·|x), then y_{i+1} ~ π(·|T(x, y_i)) for i < n, where
T is the `posttrain.revision.RevisionTemplate` the model was trained with.

Everything lands in one output folder:

    revision_<k>.json              AlpacaEval outputs [{instruction, output, generator}] of revision k = 0..n, each
                                   written atomically once that revision is complete
    generations.revision_<k>.jsonl the resumable generation cache of revision k (`generate_cached`)
    revisions.json                 what was generated: model, revision count, template, sampling params

A rerun regenerates nothing that is finished: every revision goes through its cache, and a killed run resumes in the
middle of the revision it stopped in. Revision prompts are the template's token ids (`RevisionTemplate.prompt_ids`,
the ids the trainer trained on) for the transformers and vLLM backends; an OpenAI-compatible server applies its own
chat template, so it gets the rendered text (`RevisionTemplate.render`) instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from posttrain.errors import UsageError
from posttrain.generation.cache import generate_cached
from posttrain.generation.types import Generator, Prompt, SamplingParams
from posttrain.io import atomic_write_json

MANIFEST_FILE = "revisions.json"
# The remedy when the template alone overruns the revision prompt's budget (the context window less max_new_tokens).
TOO_LONG_FIX = "lower max_new_tokens or shorten the revision template"


def revision_file(output_dir: str | os.PathLike, revision: int) -> Path:
    return Path(output_dir) / f"revision_{revision}.json"


def revision_cache(output_dir: str | os.PathLike, revision: int) -> Path:
    return Path(output_dir) / f"generations.revision_{revision}.jsonl"


def instruction_of(prompt) -> str:
    """The AlpacaEval `instruction` of a prompt: the text itself, or the last user message's content."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise UsageError("a chat prompt needs a user message with string content")
    return users[-1]


def takes_token_ids(generator) -> bool:
    """Whether `generator` is prompted with token ids (transformers, vLLM) rather than text (an OpenAI-compatible
    server, whose `model_id` starts with `openai:`, as does a lazy generator on that backend)."""
    return not str(getattr(generator, "model_id", "")).startswith("openai:")


def revision_prompts(template, tokenizer, prompts: Sequence[Prompt], drafts: Sequence[str], token_ids: bool = True,
                     max_prompt_tokens: int | None = None) -> list[Prompt]:
    """T(x, y) for each prompt x and its draft y: token ids cut to `max_prompt_tokens` (draft first, then prompt),
    or with `token_ids=False` the rendered text or chat messages (uncut)."""
    if token_ids:
        return [template.prompt_ids(tokenizer, prompt, draft, max_tokens=max_prompt_tokens, fix=TOO_LONG_FIX)
                for prompt, draft in zip(prompts, drafts, strict=True)]
    return [template.render(prompt, draft) for prompt, draft in zip(prompts, drafts, strict=True)]


def revision_prompt_budget(source: str, max_new_tokens: int) -> int | None:
    """Tokens a revision prompt may take: `source`'s context window less `max_new_tokens` (None when unknown)."""
    from posttrain.generation.context import context_window

    context = context_window(source)
    return None if context is None else context - max_new_tokens


def generate_revisions(generator: Generator, prompts: Sequence[Prompt], template, tokenizer, params: SamplingParams,
                       revisions: int, output_dir: str | os.PathLike, *, name: str = "model",
                       token_ids: bool | None = None, max_prompt_tokens: int | None = None,
                       model_id: str | None = None, model_path: str | None = None,
                       progress: bool = True) -> list[list[str]]:
    """Revisions 0..`revisions` of every prompt; returns their output texts, by revision then prompt.

    Revision 0 is `generator` on `prompts`; revision k+1 is `generator` on `template` applied to each prompt and
    its revision-k output. `token_ids` (default: `takes_token_ids(generator)`) chooses id prompts or rendered text;
    `name` is the outputs' `generator` field; `model_id` names the weights in the caches (default: the generator's);
    `model_path` is recorded in revisions.json (the win-rate report finds the model's run folder through it).
    """
    if revisions < 0:
        raise UsageError(f"revisions must be >= 0, got {revisions}")
    if revisions > 0 and template is None:
        raise UsageError("revising needs a revision template: pass one, or use a model trained with SRPO")
    if params.n != 1:
        raise UsageError(f"revision inference revises one draft per prompt: use n=1 (got n={params.n})")
    if not prompts:
        raise UsageError("no prompts to generate from")
    token_ids = takes_token_ids(generator) if token_ids is None else token_ids
    if revisions > 0:  # a template that cannot fit the budget (or the chat template) fails before anything runs
        revision_prompts(template, tokenizer, prompts[:1], [""], token_ids, max_prompt_tokens)
    output_dir = Path(output_dir)
    write_manifest(output_dir, name, revisions, template, params, model_id or getattr(generator, "model_id", None),
                   model_path)
    instructions = [instruction_of(prompt) for prompt in prompts]
    outputs: list[list[str]] = []
    for revision in range(revisions + 1):
        batch = prompts if revision == 0 else revision_prompts(template, tokenizer, prompts, outputs[-1], token_ids,
                                                                max_prompt_tokens)
        completions = generate_cached(generator, list(batch), params, revision_cache(output_dir, revision),
                                      model_id=model_id, progress=f"revision {revision}" if progress else None)
        texts = [c[0].text for c in completions]
        atomic_write_json(revision_file(output_dir, revision),
                          [{"instruction": i, "output": t, "generator": name} for i, t in zip(instructions, texts)])
        outputs.append(texts)
    return outputs


def write_manifest(output_dir: Path, name: str, revisions: int, template, params: SamplingParams,
                   model_id: str | None, model_path: str | None) -> None:
    atomic_write_json(output_dir / MANIFEST_FILE, {
        "generator": name, "model": model_path, "model_id": model_id, "revisions": revisions,
        "revision_template": getattr(template, "text", None), "sampling": params.to_dict(),
        "files": [revision_file(output_dir, k).name for k in range(revisions + 1)]})
