"""AlpacaEval-2-compatible win rate (= `posttrain eval winrate`). Reproduce published numbers from annotations:
`python eval/winrate.py --annotations annotations.json --output_dir runs/winrate`; or generate and judge:
`python eval/winrate.py --model runs/toy/dpo --reference runs/toy/sft --instructions pg:sort8/sft
--judge rule:sort8 --output_dir runs/winrate`."""

from posttrain.evaluation.winrate_cli import main

if __name__ == "__main__":
    main()
