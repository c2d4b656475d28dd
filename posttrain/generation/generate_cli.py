"""`posttrain generate`: a model's outputs on a prompt set, in AlpacaEval format, resumable.

Useful on its own: without --revisions it writes revision_0.json ([{instruction, output, generator}]) for any model,
ready for `posttrain eval winrate --model_outputs`. A killed run resumes where it stopped; a finished one is not
generated again.

With --revisions N it is SRPO's n-revision inference (docs/methods.md §2): revision k+1 is the model prompted with
the revision template around the prompt and revision k's output; revision_0.json .. revision_N.json are written,
ready for `posttrain eval winrate --revisions_dir`. The template is the one the SRPO run saved next to its model
(revision_template.json), or --revision_template.

Prompts: a JSON/JSONL file (or pg:<task>/<kind>, or a hub id) whose rows have `instruction` (AlpacaEval: sent as a
user chat message) or `prompt` (text, sent as is, or chat messages).
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.errors import HelpFormatter, OneLineArgumentParser, UsageError, check_counts, exit_on_usage_error
from posttrain.io import check_output_folder
from posttrain.revision import DRAFT_SLOT, PROMPT_SLOT, RevisionTemplate, template_problem


def read_prompts(source: str, split: str | None, limit: int | None) -> list:
    """The prompts of a dataset's rows: `prompt` (text or chat messages) or `instruction` (as a user message)."""
    from posttrain.data.loading import load_prompt_dataset

    dataset, key = load_prompt_dataset(source, "--prompts", split, limit)
    prompts = []
    for index, value in enumerate(dataset[key]):
        if key == "instruction" and isinstance(value, str):
            value = [{"role": "user", "content": value}]
        if not (isinstance(value, str) or (isinstance(value, list) and value and all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in value))):
            raise UsageError(f"prompts {source!r}: row {index} has {key} of type {type(value).__name__}; expected "
                             "text or a list of chat messages with string content")
        prompts.append(value)
    return prompts


def load_template(spec: str | None, model: str) -> RevisionTemplate:
    """--revision_template (a JSON file {"text": ...}, a folder holding revision_template.json, or the template text
    itself), else the template saved in the model folder."""
    if spec is None:
        template = RevisionTemplate.load(model) if Path(model).expanduser().is_dir() else None
        if template is None:
            raise UsageError(f"no revision template found in {model!r}: pass --revision_template (a JSON file or "
                             f"text with {PROMPT_SLOT} and {DRAFT_SLOT}), or train the model with SRPO, which saves "
                             "one")
        return template
    path = Path(spec).expanduser()
    if path.is_dir():
        return RevisionTemplate.load(path) or _no_template(spec)
    if path.is_file():
        try:
            text = json.loads(path.read_text(encoding="utf-8"))["text"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise UsageError(f"--revision_template file {spec!r} must be UTF-8 JSON "
                             f"{{\"text\": \"... {PROMPT_SLOT} ... {DRAFT_SLOT} ...\"}}") from None
    elif spec.endswith(".json"):
        raise UsageError(f"--revision_template file {spec!r} does not exist; pass an existing JSON file or the "
                         "template text")
    else:
        text = spec
    problem = template_problem(text)
    if problem:
        raise UsageError(f"--revision_template {problem}; e.g. '{PROMPT_SLOT}\\nDraft: {DRAFT_SLOT}\\nImprove it.'")
    return RevisionTemplate(text)


def _no_template(spec: str):
    raise UsageError(f"--revision_template folder {spec!r} holds no revision_template.json; pass the file or the "
                     "template text")


def add_generation_arguments(parser) -> None:
    """The generation options `posttrain generate` and `posttrain eval winrate` share."""
    parser.add_argument("--backend", default="auto", choices=["auto", "vllm", "transformers"],
                        help="generation backend (auto: vLLM when installed)")
    parser.add_argument("--batch_size", type=int, default=64, help="prompts per generation batch")
    parser.add_argument("--max_new_tokens", type=int, default=256,
                        help="new tokens per output, capped at what the generating model's context leaves")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling threshold")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")


def build_parser():
    parser = OneLineArgumentParser(prog="posttrain generate", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (e.g. a training run's output_dir) or hub id")
    parser.add_argument("--prompts", required=True, help="JSON/JSONL file with instruction or prompt rows, "
                                                         "pg:<task>/<kind>, or a hub id")
    parser.add_argument("--split", default=None, help="dataset split (default: test for pg:, else train)")
    parser.add_argument("--output_dir", required=True, help="folder for revision_<k>.json and the caches")
    parser.add_argument("--revisions", type=int, default=0, help="self-revision rounds after the first answer")
    parser.add_argument("--revision_template", default=None,
                        help="JSON file {\"text\": ...} or text with {prompt} and {draft} (default: the model "
                             "folder's revision_template.json)")
    add_generation_arguments(parser)
    parser.add_argument("--limit", type=int, default=None, help="use the first N prompts (default: all)")
    parser.add_argument("--name", default=None, help="the outputs' generator name (default: the model's)")
    parser.add_argument("--verbose", action="store_true", help="show every library log line and progress bar")
    return parser


def check_generation_args(args) -> None:
    """The options of `add_generation_arguments` and --output_dir, before any model loads."""
    check_counts(("--max_new_tokens", args.max_new_tokens, 1), ("--batch_size", args.batch_size, 1))
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top_p must be in (0, 1] (1: no nucleus cut), got {args.top_p}")
    check_output_folder(args.output_dir, "--output_dir")


def check_args(args) -> None:
    check_counts(("--revisions", args.revisions, 0), ("--limit", args.limit, 1))
    check_generation_args(args)


def run(argv: list[str] | None = None) -> list[list[str]]:
    """Parse `argv`, check everything before a model loads, and generate; returns outputs by revision."""
    from posttrain.console import quiet_libraries
    from posttrain.generation import ModelPool, SamplingParams
    from posttrain.generation.context import context_window, fit_max_new_tokens, longest_prompt_tokens
    from posttrain.generation.revisions import generate_revisions, revision_prompt_budget
    from posttrain.models import check_model_path, load_tokenizer

    args = build_parser().parse_args(argv)
    check_args(args)
    check_model_path(args.model, "--model")
    template = load_template(args.revision_template, args.model) if args.revisions else None
    with quiet_libraries(args.verbose):
        tokenizer = load_tokenizer(args.model)
        prompts = read_prompts(args.prompts, args.split, args.limit)
        max_new_tokens = fit_max_new_tokens(args.max_new_tokens, context_window(args.model),
                                            longest_prompt_tokens(tokenizer, prompts), args.model)
        params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=max_new_tokens,
                                seed=args.seed)
        pool = ModelPool(args.backend, args.batch_size)
        try:
            outputs = generate_revisions(pool.lazy(args.model), prompts, template, tokenizer, params, args.revisions,
                                         args.output_dir, name=args.name or Path(args.model).name or args.model,
                                         max_prompt_tokens=revision_prompt_budget(args.model, max_new_tokens),
                                         model_path=args.model)
        finally:
            pool.close()
    print(f"{len(prompts)} prompts x {args.revisions + 1} revision(s) written to {args.output_dir}/revision_<k>.json")
    return outputs


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    run(argv)
