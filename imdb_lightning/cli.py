"""The `imdb-lightning` command: LightningCLI for fit/validate/test, plus `predict` on raw text."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import yaml

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI

from .data import IMDBDataModule
from .errors import UserError
from .model import SentimentClassifier

DEFAULTS = str(Path(__file__).with_name("config") / "defaults.yaml")


class IMDBLightningCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The vocabulary cap is known when the config is parsed, so the embedding can be sized then.
        parser.link_arguments("data.vocab_size", "model.encoder.init_args.vocab_size", apply_on="parse")

    def before_instantiate_classes(self) -> None:
        # `fit --ckpt_path last` resumes the newest run of this experiment in its own version folder
        # (plain Lightning would look in a new, empty one).
        config = self.config.get(self.subcommand) if self.subcommand else None
        if self.subcommand != "fit" or config.get("ckpt_path") != "last":
            return
        logger = config.trainer.logger
        if not getattr(logger, "init_args", None) or "save_dir" not in logger.init_args:
            raise UserError("--ckpt_path last needs a TensorBoard/CSV logger config to find the run; pass a checkpoint path")
        root = Path(logger.init_args.save_dir) / logger.init_args.name
        runs = sorted(root.glob("version_*/checkpoints/last.ckpt"), key=lambda p: int(p.parents[1].name.split("_")[-1]))
        if not runs:
            raise UserError(f"--ckpt_path last: no last.ckpt under {root}; nothing to resume")
        config.ckpt_path = str(runs[-1])
        logger.init_args.version = int(runs[-1].parents[1].name.split("_")[-1])
        print(f"Resuming {runs[-1]}", file=sys.stderr)


def make_cli(args: Optional[list[str]] = None, run: bool = True) -> IMDBLightningCLI:
    """The LightningCLI; `args` as on the command line (e.g. ["fit", "--config", ...]), None for sys.argv."""
    defaults = {"default_config_files": [DEFAULTS]}
    return IMDBLightningCLI(
        SentimentClassifier,
        IMDBDataModule,
        args=args,
        run=run,
        parser_kwargs=defaults if not run else {cmd: defaults for cmd in ("fit", "validate", "test", "predict")},
        save_config_kwargs={"overwrite": True},
    )


def latest_checkpoint(config: str) -> Path:
    """The best checkpoint of the newest run of an experiment config (else its last.ckpt)."""
    logger = {}
    for path in (DEFAULTS, config):
        if not Path(path).is_file():
            raise UserError(f"{path}: no such config file")
        logger.update((yaml.safe_load(Path(path).read_text()) or {}).get("trainer", {}).get("logger", {}).get("init_args", {}))
    root = Path(logger.get("save_dir", "lightning_logs")) / logger.get("name", "default")
    runs = sorted(root.glob("version_*/checkpoints"), key=lambda p: int(p.parent.name.split("_")[-1]))
    for folder in reversed(runs):
        found = sorted(folder.glob("best*.ckpt")) or sorted(folder.glob("last*.ckpt"))
        if found:
            return found[-1]
    raise UserError(f"no checkpoint found under {root}; train first: imdb-lightning fit --config {config}")


def predict_main(argv: list[str]) -> None:
    from . import load

    parser = argparse.ArgumentParser(
        prog="imdb-lightning predict",
        description="Classify raw reviews with a trained checkpoint; prints label, P(positive) and the review.",
    )
    parser.add_argument("texts", nargs="*", help="reviews to classify")
    parser.add_argument("--ckpt_path", help="checkpoint to use")
    parser.add_argument("--config", help="experiment YAML: use the best checkpoint of its newest run")
    parser.add_argument("--file", help="text file with one review per line")
    parser.add_argument("--threshold", type=float, default=0.5, help="P(positive) at or above which a review is positive")
    opts = parser.parse_args(argv)
    if not opts.ckpt_path and not opts.config:
        parser.error("give --ckpt_path, or --config to use the newest run of that experiment")
    texts = list(opts.texts)
    if opts.file:
        path = Path(opts.file)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        texts += path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not texts:
        parser.error("no reviews: pass them as arguments or with --file")
    ckpt = opts.ckpt_path or latest_checkpoint(opts.config)
    print(f"# checkpoint: {ckpt}", file=sys.stderr)
    for text, prob in zip(texts, load(ckpt).predict(texts)):
        label = "positive" if prob >= opts.threshold else "negative"
        preview = " ".join(text.split())
        print(f"{label}\t{prob:.4f}\t{preview[:80] + ('...' if len(preview) > 80 else '')}")


def cli_main(args: Optional[list[str]] = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv and argv[0] == "predict":
            predict_main(argv[1:])
        elif argv and argv[0] == "bench":
            from .bench import bench_main

            bench_main(argv[1:])
        else:
            make_cli(args)
    except (UserError, MisconfigurationException) as err:
        sys.exit(f"imdb-lightning: error: {err}")
