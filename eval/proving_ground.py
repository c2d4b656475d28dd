"""Proving-ground accuracy and rule-judge win rate:
`python eval/proving_ground.py --model runs/toy/dpo --baseline runs/toy/sft --task sort8`."""

import sys

from posttrain.cli import main

if __name__ == "__main__":
    main(["eval-task", *sys.argv[1:]])
