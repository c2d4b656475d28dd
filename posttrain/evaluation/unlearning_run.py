"""`evaluate_unlearning`: the LUME evaluation of one model or one file of generations (docs/methods.md §5.3).

Everything the user passed is read and checked first (`prepare`), before a model loads or the output folder is
made. Then: greedy generation on the raw prompts through the resumable cache (`generations.cache.jsonl`; a rerun
generates only what is missing), the membership attack, MMLU through `evaluate_mmlu` (resumable in `mmlu/`), and
results.json, results.md and generations.jsonl, each written atomically.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from posttrain.errors import UsageError
from posttrain.evaluation import unlearning as metrics
from posttrain.evaluation import unlearning_data as data
from posttrain.io import atomic_write_json, atomic_write_text, write_jsonl


@dataclass
class UnlearningEval:
    """The settings of one evaluation. Defaults follow the task's script: greedy, 256 new tokens, raw prompts."""

    output_dir: str
    forget: str
    retain: str
    model: str | None = None
    generations: str | None = None
    backend: str = "auto"
    batch_size: int = 64
    max_new_tokens: int = 256
    max_prompt_tokens: int | None = None
    apply_chat_template: bool = False
    clean_up_spaces: bool = True
    mia_members: str | None = None
    mia_nonmembers: str | None = None
    skip_mia: bool = False
    mia_batch_size: int = 8
    mmlu_data: str = "cais/mmlu"
    mmlu_subjects: list[str] | None = None
    mmlu_limit: int | None = None
    mmlu_num_fewshot: int = 0
    mmlu_score: float | None = None
    skip_mmlu: bool = False

    def __post_init__(self):
        for flag in ("batch_size", "max_new_tokens", "max_prompt_tokens", "mia_batch_size", "mmlu_limit"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise UsageError(f"--{flag} must be >= 1, got {value}")
        if self.model is None and self.generations is None:
            raise UsageError("pass --model (to generate the outputs) or --generations FILE (outputs to score)")
        if not 0 <= self.mmlu_num_fewshot <= 5:
            raise UsageError(f"--mmlu_num_fewshot must be between 0 and 5 (MMLU's dev split has 5 per subject), "
                             f"got {self.mmlu_num_fewshot}")
        if self.mmlu_score is not None and not 0 <= self.mmlu_score <= 1:
            raise UsageError(f"--mmlu_score is an accuracy in [0, 1], got {self.mmlu_score}")
        if self.model is None and (self.mia_members or self.mia_nonmembers):
            raise UsageError("the membership attack scores documents with a model: add --model, or drop "
                             "--mia_members/--mia_nonmembers")
        if self.model is not None and not self.skip_mia and self.mia_nonmembers is None:
            raise UsageError("the membership attack needs non-member documents: pass --mia_nonmembers FILE (documents "
                             "the model never trained on), or --skip_mia")


@dataclass
class Plan:
    """What `prepare` read and decided before any model loads."""

    rows: list[dict]
    generations: list[str] | None = None
    prompts: list | None = None
    max_new_tokens: int | None = None
    truncated_prompts: int = 0
    members: list[str] | None = None
    nonmembers: list[str] | None = None
    notes: dict = field(default_factory=dict)


def prepare(cfg: UnlearningEval) -> Plan:
    """Read and check every input; UsageError on the first problem."""
    from posttrain.models import check_model_path

    if cfg.model is not None:
        check_model_path(cfg.model, "--model")
    rows = data.load_rows(cfg.forget, "forget") + data.load_rows(cfg.retain, "retain")
    plan = Plan(rows)
    if cfg.generations is not None:
        plan.generations = data.read_generations(cfg.generations, rows)
    elif cfg.model is not None:
        _plan_prompts(cfg, plan)
    _plan_mia(cfg, plan)
    _check_mmlu(cfg, plan)
    return plan


def _plan_prompts(cfg: UnlearningEval, plan: Plan) -> None:
    """Raw prompts (or chat messages), those over --max_prompt_tokens cut to their last tokens, and the new-token
    budget the model's context leaves."""
    from posttrain.generation.context import context_window, fit_max_new_tokens
    from posttrain.generation.decoding import encode_prompt
    from posttrain.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    if cfg.apply_chat_template and not tokenizer.chat_template:
        raise UsageError(f"--apply_chat_template: the tokenizer of {cfg.model!r} has no chat template")
    plan.prompts, longest = [], 0
    for row in plan.rows:
        prompt = [{"role": "user", "content": row["input"]}] if cfg.apply_chat_template else row["input"]
        ids = encode_prompt(tokenizer, prompt)
        if cfg.max_prompt_tokens and len(ids) > cfg.max_prompt_tokens:
            prompt = _last_tokens(ids, cfg.max_prompt_tokens, tokenizer.bos_token_id)
            plan.truncated_prompts += 1
        plan.prompts.append(prompt)
        longest = max(longest, min(len(ids), cfg.max_prompt_tokens or len(ids)))
    context = context_window(cfg.model)
    if context is not None and longest >= context:
        raise UsageError(f"the longest prompt has {longest} tokens, which fills the {context}-position context of "
                         f"{cfg.model}; pass --max_prompt_tokens N (below {context}) to keep each prompt's last N "
                         "tokens")
    plan.max_new_tokens = fit_max_new_tokens(cfg.max_new_tokens, context, longest, cfg.model)


def _last_tokens(ids: list[int], keep: int, bos: int | None) -> list[int]:
    """The last `keep` tokens of a prompt, its BOS token kept in front."""
    return [ids[0], *ids[len(ids) - keep + 1:]] if bos is not None and ids[0] == bos else ids[-keep:]


def _plan_mia(cfg: UnlearningEval, plan: Plan) -> None:
    if cfg.model is None or cfg.skip_mia:
        plan.notes["mia"] = "--skip_mia" if cfg.skip_mia else "no --model to score documents with"
        return
    if cfg.mia_members is not None:
        plan.members = data.read_documents(cfg.mia_members, "--mia_members")
    else:
        plan.members = data.member_documents(plan.rows)
        if not plan.members:
            raise UsageError("the forget set has no sc rows (documents) to use as MIA members; pass --mia_members "
                             "FILE or --skip_mia")
    plan.nonmembers = data.read_documents(cfg.mia_nonmembers, "--mia_nonmembers")


def _check_mmlu(cfg: UnlearningEval, plan: Plan) -> None:
    from posttrain.evaluation.mmlu import select_subjects

    if cfg.mmlu_score is not None:
        plan.notes["mmlu"] = "given with --mmlu_score"
    elif cfg.skip_mmlu or cfg.model is None:
        plan.notes["mmlu"] = "--skip_mmlu" if cfg.skip_mmlu else "no --model to evaluate"
    else:
        select_subjects(cfg.mmlu_data, cfg.mmlu_subjects)


def generate(cfg: UnlearningEval, plan: Plan, pool, output_dir: Path) -> list[str]:
    """Greedy outputs for the planned prompts, through the resumable cache in `output_dir`."""
    from posttrain.generation import SamplingParams, generate_cached

    params = SamplingParams(temperature=0.0, max_new_tokens=plan.max_new_tokens)
    completions = generate_cached(pool.lazy(cfg.model), plan.prompts, params,
                                  output_dir / "generations.cache.jsonl", progress="generate")
    texts = [c[0].text for c in completions]
    return [clean_up_spaces(t) for t in texts] if cfg.clean_up_spaces else texts


# The task's script decoded with `clean_up_tokenization_spaces=True`, which transformers 4 applied to every
# tokenizer (transformers 5 skips it for BPE ones such as OLMo's): these spaces before punctuation and
# contractions were removed.
_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def clean_up_spaces(text: str) -> str:
    for before, after in _CLEAN_UP:
        text = text.replace(before, after)
    return text


def _scorer(cfg: UnlearningEval, pool):
    """(a log-likelihood scorer for the model, whether it must be closed): the generation model when it is loaded."""
    from posttrain.evaluation.loglikelihood import TransformersScorer, VLLMScorer, load_scorer
    from posttrain.models import load_tokenizer

    generator = pool.generator if pool is not None else None
    if hasattr(generator, "llm"):
        return VLLMScorer(cfg.model, generator.tokenizer, llm=generator.llm), False
    if hasattr(generator, "model"):
        return TransformersScorer(generator.model, generator.tokenizer, cfg.mia_batch_size), False
    scorer = load_scorer(cfg.model, load_tokenizer(cfg.model), cfg.backend, batch_size=cfg.mia_batch_size)
    return scorer, True


def membership(cfg: UnlearningEval, plan: Plan, pool) -> dict | None:
    """The loss attack's AUC and score, or None when it is not run."""
    if plan.members is None:
        return None
    scorer, owned = _scorer(cfg, pool)
    try:
        member_nll, cut_members = metrics.document_nll(scorer, plan.members)
        nonmember_nll, cut_nonmembers = metrics.document_nll(scorer, plan.nonmembers)
    finally:
        if owned and hasattr(scorer, "close"):
            scorer.close()
    auc = metrics.mia_auc(member_nll, nonmember_nll)
    return {"auc": auc, "score": metrics.mia_score(auc), "n_members": len(member_nll),
            "n_nonmembers": len(nonmember_nll), "members": cfg.mia_members or "forget sc documents (input + output)",
            "nonmembers": cfg.mia_nonmembers, "mean_member_nll": sum(member_nll) / len(member_nll),
            "mean_nonmember_nll": sum(nonmember_nll) / len(nonmember_nll), "max_length": scorer.max_length,
            "truncated_documents": cut_members + cut_nonmembers}


def run_mmlu(cfg: UnlearningEval, output_dir: Path) -> dict | None:
    if cfg.mmlu_score is not None:
        return {"acc": cfg.mmlu_score, "source": "--mmlu_score"}
    if cfg.skip_mmlu or cfg.model is None:
        return None
    from posttrain.evaluation.mmlu import evaluate_mmlu

    result = evaluate_mmlu(cfg.model, data=cfg.mmlu_data, num_fewshot=cfg.mmlu_num_fewshot,
                           subjects=cfg.mmlu_subjects, limit=cfg.mmlu_limit, backend=cfg.backend,
                           output_dir=output_dir / "mmlu", progress=True)
    return {"acc": result["overall"]["acc"], "n": result["overall"]["n"], "source": "evaluate_mmlu",
            "num_fewshot": cfg.mmlu_num_fewshot, "data": cfg.mmlu_data,
            "categories": {name: row["acc"] for name, row in result["categories"].items()},
            "results": str(output_dir / "mmlu" / "results.json")}


def evaluate_unlearning(cfg: UnlearningEval) -> dict:
    """Score `cfg`'s model or generations; writes results.json, results.md and generations.jsonl to its
    output_dir and returns the results."""
    from posttrain.generation import ModelPool

    plan = prepare(cfg)
    output_dir, seconds = Path(cfg.output_dir), {}
    output_dir.mkdir(parents=True, exist_ok=True)
    pool = ModelPool(cfg.backend, cfg.batch_size) if cfg.model is not None else None
    try:
        started = time.perf_counter()
        outputs = plan.generations if plan.generations is not None else generate(cfg, plan, pool, output_dir)
        seconds["generation"] = time.perf_counter() - started
        started = time.perf_counter()
        mia = membership(cfg, plan, pool)
        seconds["mia"] = time.perf_counter() - started
    finally:
        if pool is not None:
            pool.close()
    started = time.perf_counter()
    mmlu = run_mmlu(cfg, output_dir)
    seconds["mmlu"] = time.perf_counter() - started
    started = time.perf_counter()
    scored = metrics.score_rows(plan.rows, outputs)
    results = metrics.summarize(scored, mia, mmlu)
    seconds["scoring"] = time.perf_counter() - started
    results |= {"notes": plan.notes, "settings": _settings(cfg, plan, pool),
                "seconds": {k: round(v, 2) for k, v in seconds.items()}}
    write_outputs(output_dir, results, scored)
    return results


def _settings(cfg: UnlearningEval, plan: Plan, pool) -> dict:
    decoding = {"greedy": True, "max_new_tokens": plan.max_new_tokens, "truncated_prompts": plan.truncated_prompts,
                "backend": pool.backend if pool is not None and plan.generations is None else None}
    return {**asdict(cfg), "decoding": decoding,
            "rows": {split: sum(r["split"] == split for r in plan.rows) for split in metrics.SPLITS}}


def write_outputs(output_dir: Path, results: dict, scored: list[dict]) -> None:
    """results.json, results.md and generations.jsonl ({id, split, task, output, expected_output, score}: the
    format --generations reads)."""
    atomic_write_json(output_dir / "results.json", {"benchmark": "SemEval-2025 Task 4 (LUME)", **results})
    atomic_write_text(output_dir / "results.md", metrics.markdown_table(results))
    write_jsonl(output_dir / "generations.jsonl",
                [{"id": r["id"], "split": r["split"], "task": r["task"], "output": r["generation"],
                  "expected_output": r["output"], "score": r["score"]} for r in scored])
