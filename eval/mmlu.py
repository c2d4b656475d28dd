"""MMLU accuracy as lm-evaluation-harness's `mmlu` task (= `posttrain eval mmlu`):
`python eval/mmlu.py --model runs/toy/sft --data tests/fixtures/mmlu --num_fewshot 5` (a 3-subject excerpt; all 57
subjects: `--data cais/mmlu`, the hub dataset and the default). See docs/methods.md §6.2."""

from posttrain.evaluation.mmlu_cli import main

if __name__ == "__main__":
    main()
