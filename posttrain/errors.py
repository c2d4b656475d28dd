"""User-facing errors: one line, exit code 2, no traceback; an interrupt: one line, exit code 128 + signal number."""

from __future__ import annotations

import argparse
import contextlib
import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake the user can fix (bad recipe, missing file, wrong column). Printed as one line."""


class Interrupted(Exception):
    """The user stopped the command with a signal; the message says how to resume. Exit code 128 + signal."""

    def __init__(self, signum: int, message: str = "interrupted; rerun the same command to resume"):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that raises `UsageError` instead of printing usage: one line, exit code 2 under
    `exit_on_usage_error`. A subcommand's message starts with its name (e.g. `posttrain eval mmlu: ...`);
    subparsers inherit this class."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}" if " " in self.prog else message)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and each option's default (where it has one) after its help (the CLIs of
    `posttrain generate` and `posttrain eval winrate`)."""

    def _get_help_string(self, action):
        if action.help and action.default is not None and action.default is not False \
                and action.default != argparse.SUPPRESS:
            return f"{action.help} (default: %(default)s)"
        return action.help


def check_counts(*flags: tuple[str, int | None, int]) -> None:
    """Each (flag, value, least): a value given (not None) must be at least `least`, e.g. ("--n", 0, 1)."""
    for flag, value, least in flags:
        if value is not None and value < least:
            raise UsageError(f"{flag} must be >= {least}, got {value}")


def exit_on_usage_error(func: Callable[..., T]) -> Callable[..., T]:
    """Turn a `UsageError` raised by `func` into `posttrain: error: <message>` on stderr and exit code 2, and Ctrl-C
    (SIGINT) or SIGTERM into `posttrain: interrupted; ...` and exit code 130 or 143, without a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            with _sigterm_raises():
                return func(*args, **kwargs)
        except UsageError as err:
            message = " ".join(str(err).split())  # exactly one line
            print(f"posttrain: error: {message}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            stop = Interrupted(signal.SIGINT)
        except Interrupted as err:
            stop = err
        print(f"posttrain: {stop}", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None

    return wrapper


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises `Interrupted` (as Ctrl-C raises KeyboardInterrupt), unless someone else already
    handles SIGTERM or this is not the main thread (only it may set handlers)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def raise_interrupted(signum, frame):
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
