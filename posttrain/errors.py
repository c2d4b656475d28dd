"""User-facing errors: one line, exit code 2, no traceback."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake the user can fix (bad recipe, missing file, wrong column). Printed as one line."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that raises `UsageError` instead of printing usage: one line, exit code 2 under
    `exit_on_usage_error`. A subcommand's message starts with its name (e.g. `posttrain eval mmlu: ...`);
    subparsers inherit this class."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}" if " " in self.prog else message)


def exit_on_usage_error(func: Callable[..., T]) -> Callable[..., T]:
    """Turn a `UsageError` raised by `func` into `posttrain: error: <message>` on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UsageError as err:
            message = " ".join(str(err).split())  # exactly one line
            print(f"posttrain: error: {message}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None

    return wrapper
