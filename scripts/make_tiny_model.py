"""Build the tiny offline model and tokenizer: `python scripts/make_tiny_model.py --output runs/tiny/llama`."""

import sys

from posttrain.cli import main

if __name__ == "__main__":
    main(["tiny-model", *sys.argv[1:]])
