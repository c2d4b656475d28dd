"""MMLU as lm-evaluation-harness's `mmlu` task (docs/methods.md §6.2).

Prompt: `The following are multiple choice questions (with answers) about {subject with spaces}.` and a blank line,
then `num_fewshot` solved dev-split questions in file order, each `{question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:`
followed by ` {letter}` and a blank line, then the test question. The continuations are ` A` .. ` D`; the prediction
is the one with the highest log-likelihood (lm-eval's `acc`). With a chat template the header is the system
message, the shots are user/assistant turns (or one user message) and the continuations lose their leading space.
Accuracy is reported per subject, per category and overall, the latter two weighted by subject size.
`evaluate_mmlu` is the entry point (`posttrain eval mmlu` is a thin wrapper over it).
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import UsageError
from posttrain.io import ResumableJsonl, atomic_write_json, read_json, write_jsonl

LETTERS = ("A", "B", "C", "D")
HUB_ID = "cais/mmlu"

# lm-eval's grouping of the 57 subjects (its mmlu_{stem,humanities,social_sciences,other} groups).
CATEGORY_SUBJECTS = {
    "stem": (
        "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
        "college_computer_science", "college_mathematics", "college_physics", "computer_security",
        "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
        "high_school_chemistry", "high_school_computer_science", "high_school_mathematics", "high_school_physics",
        "high_school_statistics", "machine_learning",
    ),
    "humanities": (
        "formal_logic", "high_school_european_history", "high_school_us_history", "high_school_world_history",
        "international_law", "jurisprudence", "logical_fallacies", "moral_disputes", "moral_scenarios",
        "philosophy", "prehistory", "professional_law", "world_religions",
    ),
    "social sciences": (
        "econometrics", "high_school_geography", "high_school_government_and_politics",
        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology", "human_sexuality",
        "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
    ),
    "other": (
        "business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging", "management",
        "marketing", "medical_genetics", "miscellaneous", "nutrition", "professional_accounting",
        "professional_medicine", "virology",
    ),
}
SUBJECT_CATEGORY = {s: c for c, subjects in CATEGORY_SUBJECTS.items() for s in subjects}
SUBJECTS = tuple(sorted(SUBJECT_CATEGORY))


@dataclass(frozen=True)
class Question:
    subject: str
    index: int  # row in its split, 0-based
    question: str
    choices: tuple[str, str, str, str]
    answer: int  # 0-3


# ---------------------------------------------------------------- data


def is_local(data: str) -> bool:
    return data.startswith((".", "/", "~")) or Path(data).expanduser().exists()


def available_subjects(data: str) -> list[str]:
    """Subjects with a test file in a local directory; every subject for a hub id."""
    if not is_local(data):
        return list(SUBJECTS)
    root = Path(data).expanduser()
    if not root.exists():
        raise UsageError(f"MMLU data folder {data!r} does not exist; pass a local copy or the hub id {HUB_ID}")
    if not (root / "test").is_dir():
        raise UsageError(f"MMLU data {data!r} has no test/ folder; pass a directory with dev/{{subject}}_dev.csv "
                         f"and test/{{subject}}_test.csv files, or the hub id {HUB_ID}")
    found = [s for s in SUBJECTS if (root / "test" / f"{s}_test.csv").is_file()]
    if not found:
        raise UsageError(f"no MMLU test files ({{subject}}_test.csv for the 57 subjects) under {root / 'test'}")
    return found


def select_subjects(data: str, requested: Iterable[str] | None) -> list[str]:
    """The requested subjects (all available ones when None), checked against the 57 subject names."""
    from posttrain.registry import closest

    available = available_subjects(data)
    if not requested:
        return available
    chosen = []
    for subject in requested:
        if subject not in SUBJECT_CATEGORY:
            raise UsageError(f"unknown MMLU subject {subject!r}{closest(subject, SUBJECTS)}")
        if subject not in available:
            raise UsageError(f"MMLU subject {subject!r} has no test file in {data!r}")
        if subject not in chosen:
            chosen.append(subject)
    return chosen


def load_split(data: str, subject: str, split: str) -> list[Question]:
    """Rows of one subject's `dev` or `test` split, from a local CSV directory or the hub dataset."""
    if is_local(data):
        return read_csv(Path(data).expanduser() / split / f"{subject}_{split}.csv", subject)
    import datasets

    try:
        rows = datasets.load_dataset(data, subject, split=split)
    except Exception as err:  # the hub raises many types; the user needs the one-line reason
        raise UsageError(f"cannot load {data!r} subject {subject!r} split {split!r}: {str(err).splitlines()[0]}") \
            from None
    return [Question(subject, i, r["question"], tuple(r["choices"]), int(r["answer"])) for i, r in enumerate(rows)]


def _answer_index(value: str) -> int | None:
    value = value.strip()
    if value in LETTERS:
        return LETTERS.index(value)
    return int(value) if value in ("0", "1", "2", "3") else None


def read_csv(path: Path, subject: str) -> list[Question]:
    """question, 4 choices, answer (A-D or 0-3); an optional header row starting with `question` is skipped."""
    if not path.is_file():
        raise UsageError(f"MMLU file {path} does not exist")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if rows and rows[0] and rows[0][0].strip().lower() == "question":
        rows, first_line = rows[1:], 2
    else:
        first_line = 1
    if not rows:
        raise UsageError(f"MMLU file {path} has no questions")
    questions = []
    for i, row in enumerate(rows):
        answer = _answer_index(row[5]) if len(row) == 6 else None
        if answer is None:
            raise UsageError(f"{path} line {first_line + i}: expected 6 columns (question, 4 choices, answer A-D "
                             f"or 0-3), got {row!r:.120}")
        questions.append(Question(subject, i, row[0], tuple(row[1:5]), answer))
    return questions


# ---------------------------------------------------------------- prompts


def subject_header(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def format_question(q: Question) -> str:
    lines = [q.question.strip()] + [f"{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices)]
    return "\n".join(lines) + "\nAnswer:"


def plain_prompt(question: Question, shots: list[Question]) -> str:
    solved = "".join(f"{format_question(s)} {LETTERS[s.answer]}\n\n" for s in shots)
    return subject_header(question.subject) + solved + format_question(question)


def chat_messages(question: Question, shots: list[Question], multiturn: bool = True) -> list[dict]:
    """System header; the shots as user/assistant turns (multiturn) or folded into the one user message."""
    messages = [{"role": "system", "content": subject_header(question.subject)}]
    if multiturn:
        for shot in shots:
            messages += [{"role": "user", "content": format_question(shot)},
                         {"role": "assistant", "content": LETTERS[shot.answer]}]
        return messages + [{"role": "user", "content": format_question(question)}]
    solved = "".join(f"{format_question(s)} {LETTERS[s.answer]}\n\n" for s in shots)
    return messages + [{"role": "user", "content": solved + format_question(question)}]


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The chat template as text with the generation prompt; templates without a system role get none."""
    import jinja2

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except jinja2.exceptions.TemplateError:
        return tokenizer.apply_chat_template([m for m in messages if m["role"] != "system"], tokenize=False,
                                             add_generation_prompt=True)


@dataclass(frozen=True)
class PromptFormat:
    num_fewshot: int = 0
    chat_tokenizer: object | None = None  # set: apply its chat template
    multiturn: bool = True

    def context(self, question: Question, shots: list[Question]) -> str:
        if self.chat_tokenizer is None:
            return plain_prompt(question, shots)
        return render_chat(self.chat_tokenizer, chat_messages(question, shots, self.multiturn))

    def continuations(self) -> list[str]:
        return [("" if self.chat_tokenizer is not None else " ") + letter for letter in LETTERS]


def fewshot_examples(data: str, subject: str, num_fewshot: int) -> list[Question]:
    """The first `num_fewshot` dev questions, in file order (lm-eval's `first_n` sampler)."""
    if num_fewshot == 0:
        return []
    dev = load_split(data, subject, "dev")
    if num_fewshot > len(dev):
        raise UsageError(f"--num_fewshot {num_fewshot} exceeds the {len(dev)} dev questions of {subject!r}")
    return dev[:num_fewshot]


# ---------------------------------------------------------------- scoring and aggregation


def predict(loglikelihoods: list[float]) -> int:
    """Index of the highest log-likelihood; the first one on ties."""
    return max(range(len(loglikelihoods)), key=lambda i: (loglikelihoods[i], -i))


def score_questions(scorer, questions: list[Question], shots: list[Question], fmt: PromptFormat) -> list[dict]:
    """One record per question: its answer, prediction, the four log-likelihoods and whether it was truncated."""
    from posttrain.evaluation.loglikelihood import encode_requests, is_truncated

    continuations = fmt.continuations()
    requests = [(context, c) for context in (fmt.context(q, shots) for q in questions) for c in continuations]
    encoded = encode_requests(scorer.tokenizer, requests)
    scores = scorer.score_encoded(encoded)
    records = []
    for k, q in enumerate(questions):
        lls = scores[4 * k:4 * k + 4]
        prediction = predict(lls)
        records.append({"subject": q.subject, "index": q.index, "answer": q.answer, "prediction": prediction,
                        "correct": prediction == q.answer, "loglikelihoods": lls,
                        "truncated": any(is_truncated(e, scorer.max_length) for e in encoded[4 * k:4 * k + 4])})
    return records


def _accuracy(records: list[dict]) -> dict:
    correct = sum(bool(r["correct"]) for r in records)
    return {"acc": correct / len(records) if records else None, "correct": correct, "n": len(records)}


def aggregate(records: list[dict]) -> dict:
    """Per-subject accuracy; per-category and overall accuracy weighted by subject size (= pooled over questions,
    as lm-eval's `weight_by_size` group aggregate)."""
    by_subject: dict[str, list[dict]] = {}
    for r in records:
        by_subject.setdefault(r["subject"], []).append(r)
    categories = {}
    for category, subjects in CATEGORY_SUBJECTS.items():
        members = [s for s in subjects if s in by_subject]
        if members:
            categories[category] = {**_accuracy([r for s in members for r in by_subject[s]]), "subjects": members}
    return {"overall": _accuracy(records), "categories": categories,
            "subjects": {s: {**_accuracy(rs), "category": SUBJECT_CATEGORY[s]} for s, rs in sorted(by_subject.items())}}


@dataclass(frozen=True)
class SubjectData:
    subject: str
    questions: list[Question]  # the test questions to score
    shots: list[Question]  # solved dev questions shown before each


def load_subjects(data: str, subjects: list[str], limit: int | None = None, num_fewshot: int = 0) -> list[SubjectData]:
    """Everything to score, loaded (and checked) before any model is."""
    return [SubjectData(s, load_split(data, s, "test")[:limit], fewshot_examples(data, s, num_fewshot))
            for s in subjects]


def question_key(record: dict) -> tuple[str, int]:
    return record["subject"], record["index"]


def score_subjects(scorer, subjects: list[SubjectData], fmt: PromptFormat, done: Iterable[dict] = (),
                   on_records: Callable[[list[dict]], None] | None = None, chunk_size: int = 256,
                   progress: bool = False) -> list[dict]:
    """Score every question not already in `done` (records from an interrupted run), handing each finished chunk
    to `on_records` (which streams it to disk). Returns all records, `done` included, in subject order."""
    from tqdm.auto import tqdm

    finished = {question_key(r): r for r in done}
    todo = {s.subject: [q for q in s.questions if (s.subject, q.index) not in finished] for s in subjects}
    bar = tqdm(total=sum(map(len, todo.values())), desc="mmlu", disable=not progress)
    for subject in subjects:
        pending = todo[subject.subject]
        for start in range(0, len(pending), chunk_size):
            records = score_questions(scorer, pending[start:start + chunk_size], subject.shots, fmt)
            finished.update((question_key(r), r) for r in records)
            if on_records:
                on_records(records)
            bar.update(len(records))
    bar.close()
    return [finished[(s.subject, q.index)] for s in subjects for q in s.questions]


# ---------------------------------------------------------------- the entry point

SCORE_SETTINGS = ("model", "revision", "data", "num_fewshot", "apply_chat_template", "fewshot_as_multiturn",
                  "backend", "max_length", "dtype")


def check_options(num_fewshot: int, **positive: int | None) -> None:
    """num_fewshot in 0-5 (the dev split has 5 per subject) and the `positive` options (None: unset) >= 1."""
    for name, value in positive.items():
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be a positive integer, got {value}")
    if not 0 <= num_fewshot <= 5:
        raise UsageError(f"--num_fewshot must be between 0 and 5 (the dev split has 5 per subject), got {num_fewshot}")


def check_resumable(output_dir: Path, settings: dict) -> None:
    """Record `settings` in `output_dir`; scores made there with other settings must not be mixed into this run."""
    path = output_dir / "scoring.json"
    if path.exists():
        previous = read_json(path)
        changed = [k for k in SCORE_SETTINGS if previous.get(k) != settings.get(k)]
        if changed:
            raise UsageError(f"{output_dir} holds MMLU scores made with a different {changed[0]} "
                             f"({previous.get(changed[0])!r}); pass another --output_dir or delete it")
    atomic_write_json(path, settings)


def evaluate_mmlu(model: str, data: str = HUB_ID, num_fewshot: int = 0, subjects: Iterable[str] | None = None,
                  limit: int | None = None, backend: str = "auto", output_dir: str | os.PathLike | None = None,
                  apply_chat_template: bool = False, fewshot_as_multiturn: bool = True, batch_size: int = 32,
                  max_length: int | None = None, dtype: str = "auto", revision: str | None = None,
                  trust_remote_code: bool = False, gpu_memory_utilization: float | None = None,
                  progress: bool = False) -> dict:
    """MMLU accuracy of `model` (a folder or hub id) on `data` (a folder of dev/ and test/ CSVs, or a hub id).

    Returns the results: `config` (the settings), `overall`, `categories` and `subjects` accuracy,
    `truncated_questions` and `seconds`. With `output_dir` it also writes results.json and predictions.jsonl there,
    and streams scored questions to scored.jsonl, so a rerun with the same settings scores only what is missing.
    """
    from posttrain.evaluation.loglikelihood import load_scorer
    from posttrain.models import load_tokenizer

    check_options(num_fewshot, limit=limit, batch_size=batch_size, max_length=max_length)
    chosen = select_subjects(data, subjects)
    to_score = load_subjects(data, chosen, limit, num_fewshot)
    tokenizer = load_tokenizer(model, revision, trust_remote_code)
    if apply_chat_template and not tokenizer.chat_template:
        raise UsageError(f"--apply_chat_template: the tokenizer of {model!r} has no chat template")
    started = time.perf_counter()
    scorer = load_scorer(model, tokenizer, backend, batch_size=batch_size, max_length=max_length, dtype=dtype,
                         revision=revision, trust_remote_code=trust_remote_code,
                         gpu_memory_utilization=gpu_memory_utilization)
    settings = {"model": model, "revision": revision, "data": data, "num_fewshot": num_fewshot,
                "apply_chat_template": apply_chat_template, "fewshot_as_multiturn": fewshot_as_multiturn,
                "backend": scorer.name, "max_length": scorer.max_length, "dtype": dtype}
    fmt = PromptFormat(num_fewshot, tokenizer if apply_chat_template else None, fewshot_as_multiturn)
    try:
        records = _score_resumably(scorer, to_score, fmt, settings, output_dir, progress)
    finally:
        if hasattr(scorer, "close"):  # stop vLLM's engine processes
            scorer.close()
    results = {
        "task": "mmlu (lm-evaluation-harness conventions, metric acc)",
        "config": settings | {"subjects": chosen, "limit": limit,
                              "chat_template": tokenizer.chat_template if apply_chat_template else None,
                              "batch_size": batch_size},
        **aggregate(records),
        "truncated_questions": sum(bool(r["truncated"]) for r in records),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if output_dir is not None:
        write_jsonl(Path(output_dir) / "predictions.jsonl", records)
        atomic_write_json(Path(output_dir) / "results.json", results)
    return results


def _score_resumably(scorer, subjects: list[SubjectData], fmt: PromptFormat, settings: dict,
                     output_dir: str | os.PathLike | None, progress: bool) -> list[dict]:
    """`score_subjects`, streamed to and resumed from `output_dir`/scored.jsonl when there is an output_dir."""
    if output_dir is None:
        return score_subjects(scorer, subjects, fmt, progress=progress)
    check_resumable(Path(output_dir), settings)
    stream = ResumableJsonl(Path(output_dir) / "scored.jsonl", key=question_key)
    return score_subjects(scorer, subjects, fmt, done=stream.done.values(), on_records=stream.extend,
                          progress=progress)
