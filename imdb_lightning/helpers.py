"""Small pieces the commands share: their argument parser, comma-separated options, a headless matplotlib."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

from .errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the project's own commands: a bad option is a UserError, shown as one line."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)")


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


def pyplot():
    """matplotlib.pyplot drawing to files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
