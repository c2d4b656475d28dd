"""SemEval-2025 Task 4 (LUME) unlearning scores (= `posttrain eval unlearning`):
`python eval/unlearning.py --model runs/unlearn --data tests/fixtures/lume --mia_nonmembers
tests/fixtures/lume/mia_nonmembers.jsonl --skip_mmlu`, or `--generations FILE` to score existing outputs.
See docs/methods.md §5.3."""

from posttrain.evaluation.unlearning_cli import main

if __name__ == "__main__":
    main()
