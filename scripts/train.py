"""Launchable training entry point: `accelerate launch scripts/train.py --config recipe.yaml [--key value ...]`."""

import sys

from posttrain.errors import exit_on_usage_error
from posttrain.train import main

if __name__ == "__main__":
    exit_on_usage_error(main)(sys.argv[1:])
