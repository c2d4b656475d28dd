"""MMLU accuracy as lm-evaluation-harness's `mmlu` task (= `posttrain eval mmlu`):
`python eval/mmlu.py --model runs/toy/sft --data ../shared/data/mmlu --num_fewshot 5`."""

from posttrain.evaluation.mmlu_cli import main

if __name__ == "__main__":
    main()
