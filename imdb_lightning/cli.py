"""The `imdb-lightning` command: LightningCLI for fit/validate/test; `predict`, `export` and `bench` beside it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from argparse import RawDescriptionHelpFormatter

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI

from .callbacks import last_checkpoint, run_folders
from .data import IMDBDataModule
from .errors import UserError
from .model import SentimentClassifier

DEFAULTS = str(Path(__file__).with_name("config") / "defaults.yaml")
FORECAST_DEFAULTS = str(Path(__file__).with_name("config") / "forecast_defaults.yaml")
SUBCOMMANDS = ("fit", "validate", "test", "predict")
DESCRIPTION = """Train, evaluate and apply recurrent sentiment encoders on IMDB.

  fit | validate | test   Lightning runs configured by YAML (--config experiments/NAME.yaml)
  predict                 classify raw reviews with a checkpoint (imdb-lightning predict --help)
  export                  a checkpoint as ONNX or TorchScript with a standalone loader
  sweep | compare         grids of runs; leaderboard and plots
  bench                   speed and memory against a hand-written loop
  memory                  long-range memory diagnostic
  forecast fit|test|report  the airline-passengers LSTM"""


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
        found = [(run, ckpt) for run in run_folders(root) if (ckpt := last_checkpoint(run))]
        if not found:
            raise UserError(f"--ckpt_path last: no last.ckpt under {root}; nothing to resume")
        run, ckpt = found[-1]
        config.ckpt_path = str(ckpt)
        logger.init_args.version = int(run.name.split("_")[-1])
        print(f"Resuming {config.ckpt_path}", file=sys.stderr)


def make_cli(args: Optional[list[str]] = None, run: bool = True) -> IMDBLightningCLI:
    """The LightningCLI; `args` as on the command line (e.g. ["fit", "--config", ...]), None for sys.argv."""
    defaults = {"default_config_files": [DEFAULTS]}
    return IMDBLightningCLI(
        SentimentClassifier,
        IMDBDataModule,
        args=args,
        run=run,
        parser_kwargs=defaults if not run else {
            "description": DESCRIPTION, "formatter_class": RawDescriptionHelpFormatter,
            **{cmd: defaults for cmd in SUBCOMMANDS},
        },
        save_config_kwargs={"overwrite": True},
    )


def forecast_cli(args: Optional[list[str]] = None, run: bool = True) -> LightningCLI:
    """The same CLI for sequence regression (`imdb-lightning forecast fit ...`)."""
    from .timeseries import SequenceRegressor, SeriesDataModule

    defaults = {"default_config_files": [FORECAST_DEFAULTS]}
    return LightningCLI(
        SequenceRegressor, SeriesDataModule, args=args, run=run,
        parser_kwargs=defaults if not run else {cmd: defaults for cmd in SUBCOMMANDS},
        save_config_kwargs={"overwrite": True},
    )


def cli_main(args: Optional[list[str]] = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    try:
        command = argv[0] if argv else None
        if command == "predict":
            from .predict import predict_main

            predict_main(argv[1:], DEFAULTS)
        elif command == "bench":
            from .bench import bench_main

            bench_main(argv[1:])
        elif command == "export":
            from .export import export_main

            export_main(argv[1:])
        elif command == "sweep":
            from .sweep import sweep_main

            sweep_main(argv[1:])
        elif command == "compare":
            from .compare import compare_main

            compare_main(argv[1:])
        elif command == "forecast" and argv[1:2] == ["report"]:
            from .timeseries import report_main

            report_main(argv[2:])
        elif command == "forecast":
            forecast_cli(argv[1:])
        elif command == "memory":
            from .memory import memory_main

            memory_main(argv[1:])
        else:
            make_cli(args)
    except (UserError, MisconfigurationException) as err:
        sys.exit(f"imdb-lightning: error: {err}")
