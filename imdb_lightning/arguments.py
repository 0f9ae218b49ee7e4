"""The project's own command lines (predict, export, the tools, the lab): argparse whose errors are one line,
comma-separated options, and the seed range every command checks."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import NoReturn

from .errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the project's own commands: a bad option is a UserError, shown as one line."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)")

    def parse_args(self, args=None, namespace=None):
        # "--seeds -1,2": argparse takes a value starting with "-" for an option and answers "expected one
        # argument"; a value that starts like a negative number is joined to its option instead.
        args = list(args or [])
        joined, i = [], 0
        while i < len(args):
            if args[i].startswith("--") and "=" not in args[i] and i + 1 < len(args) and re.match(r"^-\d", args[i + 1]):
                joined.append(f"{args[i]}={args[i + 1]}")
                i += 2
            else:
                joined.append(args[i])
                i += 1
        return super().parse_args(joined, namespace)


def comma_list(cast: Callable = str) -> Callable[[str], list]:
    """An argparse `type` for "a,b,c" options; a bad item is reported by argparse as the option's error."""

    def parse(text: str) -> list:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        try:
            return [cast(item) for item in items]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r}: {err}") from err

    return parse


SEED_RANGE = (0, 2**32 - 1)  # what numpy (and so Lightning's seed_everything) accepts


def check_seed(option: str, seed) -> None:
    if seed is not None and not isinstance(seed, bool) and isinstance(seed, int) and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise UserError(f"{option}: a seed is between {SEED_RANGE[0]} and {SEED_RANGE[1]}, got {seed}")
