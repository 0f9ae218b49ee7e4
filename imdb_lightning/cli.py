"""The `imdb-lightning` command: a table of subcommands, each a `main(argv)` imported when used."""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
import threading
from typing import Optional

from .errors import Stopped, UserError

# name: (module with main(argv), or module:function, one line for the overview)
COMMANDS = {
    "fit": ("imdb_lightning.training", "train a model (LightningCLI: --config experiments/NAME.yaml)"),
    "validate": ("imdb_lightning.training", "evaluate a checkpoint on the validation split"),
    "test": ("imdb_lightning.training", "evaluate a checkpoint on the test split (hub, aclImdb test or --data.test_files)"),
    "pretrain": ("imdb_lightning.training:pretrain_main",
                 "train a recurrent encoder as a language model on unlabelled reviews (then fit --model.pretrained)"),
    "predict": ("imdb_lightning.serve.predict", "classify raw reviews with a checkpoint: arguments or a file"),
    "export": ("imdb_lightning.serve.export", "a checkpoint as ONNX or TorchScript, with a loader needing no Lightning"),
    "linear": ("imdb_lightning.tools.linear", "the linear references (TF-IDF and NBSVM logistic regression) as runs"),
    "sweep": ("imdb_lightning.tools.sweep", "encoders x seeds x settings, one run after another"),
    "tune": ("imdb_lightning.tools.tune", "an Optuna study of a recipe's settings, on any number of workers"),
    "compare": ("imdb_lightning.tools.compare", "a leaderboard and plots from the runs of a log folder"),
    "results": ("imdb_lightning.tools.results", "the published figures: runs into docs/results.json, the docs' tables from it"),
    "bench": ("imdb_lightning_lab.bench", "speed and memory against a hand-written PyTorch loop"),
    "memory": ("imdb_lightning_lab.memory", "can an encoder carry a cue to the end of a review?"),
    "forecast": ("imdb_lightning_lab.forecast.cli", "the airline-passengers LSTM: forecast fit | validate | test | report"),
}
LIGHTNING = ("fit", "validate", "test")  # their argv keeps the subcommand name, as LightningCLI expects


def overview() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return (
        "usage: imdb-lightning COMMAND [options]   (imdb-lightning COMMAND --help for its options)\n\n"
        "Train, evaluate and apply recurrent sentiment encoders on IMDB.\n\ncommands:\n" + "\n".join(lines)
    )


def quiet_the_unactionable() -> None:
    """Drop messages a user of this command can do nothing about: a deprecation inside Lightning's own
    code, and Lightning's advertisement for a cloud logger. Warnings about the user's settings stay."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

    class NoTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Tip: For seamless cloud logging" not in record.getMessage()

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(NoTips())


def cli_main(args: Optional[list[str]] = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    quiet_the_unactionable()
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        return
    command = argv[0]
    if command not in COMMANDS:
        sys.exit(f"imdb-lightning: error: unknown command {command!r}; the commands are {', '.join(COMMANDS)}")
    with stop_on_sigterm():
        try:
            run(command, argv)
        except KeyboardInterrupt as err:  # (a stop inside a fit is Lightning's, and its run record says so)
            name = err.signal_name if isinstance(err, Stopped) else "Ctrl-C"
            print(f"\nimdb-lightning: interrupted ({name}); {command} stopped before it finished"
                  + ("; no output file was written" if command in ("predict", "export") else ""), file=sys.stderr, flush=True)
            sys.exit(128 + (signal.SIGTERM if isinstance(err, Stopped) else signal.SIGINT))
        except SystemExit as done:
            stop = done.__context__  # Lightning ends a fit stopped by Ctrl-C with exit(1), raised while handling it
            if done.code == 1 and isinstance(stop, KeyboardInterrupt):  # (its run.json says "interrupted", and why)
                sys.exit(128 + (signal.SIGTERM if isinstance(stop, Stopped) else signal.SIGINT))
            raise
        except MemoryError as err:
            sys.exit(f"imdb-lightning: error: out of memory during {command}{f' ({err})' if str(err) else ''}; "
                     "use less data, a smaller model or a smaller --data.batch_size")


def run(command: str, argv: list[str]) -> None:
    """The command's main(argv), its errors as one line."""
    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        module, _, function = COMMANDS[command][0].partition(":")
        main = getattr(importlib.import_module(module), function or "main")
        main(argv if command in LIGHTNING else argv[1:])
    except (UserError, MisconfigurationException) as err:
        sys.exit(f"imdb-lightning: error: {one_line(str(err))}")
    except ArgumentError as err:  # LightningCLI's parser, told to raise rather than print its usage
        sys.exit(f"imdb-lightning {command}: error: {one_line(str(err))} (imdb-lightning {command} --help lists the options)")


@contextlib.contextmanager
def stop_on_sigterm():
    """SIGTERM (`kill`, a scheduler's timeout) raises `Stopped`, a KeyboardInterrupt: whatever is running
    stops as on Ctrl-C (output files discarded, a fit's last.ckpt written and its run recorded as interrupted)
    rather than vanish mid-write."""
    if threading.current_thread() is not threading.main_thread():  # (only the main thread may set handlers)
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_stopped(signum, frame) -> None:
    raise Stopped("SIGTERM")


def one_line(message: str) -> str:
    """A message as one line: the parser's nested explanations joined, blank lines dropped."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())
