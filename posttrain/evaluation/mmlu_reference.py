"""Run lm-evaluation-harness itself on MMLU data we hold locally, as the reference for parity tests and benchmarks.

lm-eval's stock `mmlu_<subject>` task configs (its installed YAML: description, prompt template, few-shot sampler,
metric) are used unchanged except for the data source, which points at JSON-lines copies of our questions in the
`cais/mmlu` schema. Needs the `lm_eval` package (the dev extra); nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from posttrain.evaluation.mmlu import Question, load_split


def _stock_task_config(subject: str) -> dict:
    import lm_eval

    folder = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    config = yaml.safe_load((folder / "_default_template_yaml").read_text())
    subject_config = yaml.safe_load((folder / f"mmlu_{subject}.yaml").read_text())
    subject_config.pop("include", None)
    subject_config.pop("tag", None)
    return config | subject_config


def _write_hub_schema(path: Path, questions: list[Question]) -> str:
    rows = ({"question": q.question, "subject": q.subject, "choices": list(q.choices), "answer": q.answer}
            for q in questions)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def lm_eval_task_configs(data: str, subjects: list[str], work_dir: Path) -> list[dict]:
    work_dir.mkdir(parents=True, exist_ok=True)
    configs = []
    for subject in subjects:
        files = {split: _write_hub_schema(work_dir / f"{subject}_{split}.jsonl", load_split(data, subject, split))
                 for split in ("dev", "test")}
        configs.append(_stock_task_config(subject) | {"dataset_path": "json", "dataset_name": None,
                                                      "dataset_kwargs": {"data_files": files}})
    return configs


def run_lm_eval(model: str, data: str, subjects: list[str], work_dir: Path, num_fewshot: int = 0,
                limit: int | None = None, batch_size: int = 32, apply_chat_template: bool = False, device: str = "cpu",
                fewshot_as_multiturn: bool = True, model_args: str = "dtype=float32") -> dict:
    """lm-eval's HF backend on our data: per question (subject, index) its requests (context, continuation),
    log-likelihoods, prediction and answer; per subject lm-eval's own `acc`."""
    import lm_eval

    output = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model},{model_args}", tasks=lm_eval_task_configs(data, subjects, work_dir),
        num_fewshot=num_fewshot, limit=limit, batch_size=batch_size, device=device, log_samples=True,
        apply_chat_template=apply_chat_template, fewshot_as_multiturn=fewshot_as_multiturn and apply_chat_template,
        bootstrap_iters=0)
    questions = {}
    for subject in subjects:
        for sample in output["samples"][f"mmlu_{subject}"]:
            lls = [float(ll) for ll, _ in sample["filtered_resps"]]
            questions[(subject, sample["doc_id"])] = {
                "requests": [tuple(a) for a in sample["arguments"]], "loglikelihoods": lls,
                "prediction": lls.index(max(lls)), "answer": sample["target"]}
    return {"questions": questions, "acc": {s: output["results"][f"mmlu_{s}"]["acc,none"] for s in subjects}}
