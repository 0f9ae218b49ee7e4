"""`imdb-lightning fit | validate | test | pretrain`: LightningCLI over the models and data.

LightningCLI parses the command line and YAML (with `base:` files spelled out here), prints
(`--print_config`) and saves each run's configuration; `ExperimentCLI` settles what the command line
names (a checkpoint to resume or evaluate, the run folder) and hands the subcommand to
`experiment.run_experiment`, as sweeps and studies do. The forecaster's command line (imdb_lightning_lab/forecast/) is
the same class over other model and data classes.
"""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from pathlib import Path
from typing import Optional, Union

import yaml
from jsonargparse import ActionConfigFile
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from . import checks
from .arguments import check_seed
from .callbacks import RunRecord
from .checkpoints import expect_kind, read_checkpoint
from .data.corpus import CorpusDataModule
from .data.datamodule import IMDBDataModule
from .errors import UserError
from .experiment import run_experiment
from .machine import check_writable
from .models.classifier import SentimentClassifier
from .models.language_model import LanguageModel
from .pretrained import resolve
from .runs import CONFIG, RECORD, experiment_root, newest_checkpoint, run_version

CONFIG_DIR = Path(__file__).with_name("config")
COMMON_DEFAULTS = str(CONFIG_DIR / "common.yaml")  # read before each command's own defaults
DEFAULTS = str(CONFIG_DIR / "defaults.yaml")
PRETRAIN_DEFAULTS = str(CONFIG_DIR / "pretrain_defaults.yaml")


# Top-level keys whose value is a mapping of options, with an example of one.
SECTIONS = {"trainer": "max_epochs: 5", "model": "dropout: 0.2", "data": "batch_size: 64"}


def load_yaml(path: str) -> dict:
    """A YAML config file as a dict, or a one-line error naming the file (and line) at fault."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{path}: no such config file" if not file.exists() else f"{path}: not a file")
    try:
        content = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from err
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a text file ({err.reason})") from err
    if content is None or content == {}:
        raise UserError(f"{path}: holds no settings (empty, or comments only); an experiment YAML sets keys such as "
                        "trainer:, model:, data:")
    if not isinstance(content, dict):
        raise UserError(f"{path}: a config holds keys such as trainer:, model:, data:; found a {type(content).__name__}")
    for key in SECTIONS:
        if key in content and content[key] is not None and not isinstance(content[key], dict):
            raise UserError(f"{path}: {key}: holds {content[key]!r}; it must be a mapping of {key} options "
                            f"(e.g. {key}: {{{SECTIONS[key]}}})")
    bases = content.get("base")
    if "base" in content and not (isinstance(bases, str) or (isinstance(bases, list) and bases and
                                                             all(isinstance(b, str) for b in bases))):
        raise UserError(f"{path}: base: holds {bases!r}; it names the YAML file(s) this one starts from, "
                        "e.g. base: recipe.yaml")
    return content


def compose(path: str, check=lambda path, config: None, seen: tuple[str, ...] = ()) -> list[str]:
    """A config file as --config arguments: its `base:` files first (recursively), then its own keys.

    Experiment YAMLs share a recipe this way (`base: recipe.yaml` + a few lines per encoder);
    LightningCLI merges the files in order, later keys over earlier ones.
    """
    config = load_yaml(path)
    check(path, config)
    if "base" not in config:
        return ["--config", path]
    resolved = str(Path(path).resolve())
    if resolved in seen:
        raise UserError(f"{path}: its base: files include itself")
    bases = config.pop("base")
    out = []
    for base in [bases] if isinstance(bases, str) else bases or []:
        out += compose(str(Path(path).parent / base), check, (*seen, resolved))
    return out + (["--config", yaml.safe_dump(config)] if config else [])


def expand_configs(argv: list[str], datamodule_class: type, other_command: str) -> list[str]:
    """argv with every config file checked (readable YAML, data options this command knows) and its
    `base:` files spelled out."""
    options = set(inspect.signature(datamodule_class.__init__).parameters) - {"self"}

    def check(path: str, config: dict) -> None:
        data = config.get("data")
        unknown = sorted(set(data) - options - {"class_path", "init_args"}) if isinstance(data, dict) else []
        if unknown:
            raise UserError(f"{path}: data.{unknown[0]} is not an option of {datamodule_class.__name__} "
                            f"(a config for another command? try: imdb-lightning {other_command} --config {path})")

    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--config" and i + 1 < len(argv):
            path, i = argv[i + 1], i + 2
        elif argv[i].startswith("--config="):
            path, i = argv[i].split("=", 1)[1], i + 1
        else:
            out.append(argv[i])
            i += 1
            continue
        if not Path(path).exists() and ("\n" in path or ": " in path):  # YAML given inline
            out += ["--config", path]
            continue
        out += compose(path, check)
    return out


# --- what a command line names, settled before anything is built ---------------------------------------------


def check_seeds(config) -> None:
    check_seed("--seed_everything", config.get("seed_everything"))
    data = config.get("data")
    check_seed("--data.split_seed", data.get("split_seed") if hasattr(data, "get") else None)


def logged_runs_root(trainer_config) -> Optional[Path]:
    """The experiment's run folder root from a parsed trainer config (its logger and default_root_dir)."""
    init = getattr(trainer_config.logger, "init_args", None)
    return experiment_root(getattr(init, "save_dir", None), getattr(init, "name", None), trainer_config.get("default_root_dir"))


def settle_checkpoint(config, subcommand: str, task: str, command: str) -> Optional[dict]:
    """The run folder and the checkpoint a fit / validate / test names, settled in `config`; the checkpoint, read
    and checked (of `task`'s kind, which `command` needs; a resume: against this command line), or None."""
    logger = config.trainer.logger
    root = logged_runs_root(config.trainer)
    if root is not None:  # the runs of --trainer.default_root_dir DIR land under DIR
        logger.init_args.save_dir = str(root.parent)
        check_writable(root.parent, "--trainer.default_root_dir" if config.trainer.get("default_root_dir")
                       else "--trainer.logger.init_args.save_dir")
    version = logger.init_args.get("version") if hasattr(logger, "init_args") else None
    if subcommand != "fit" and root is not None and version is not None and (root / f"version_{version}" / RECORD).is_file():
        logger.init_args.version = None  # (a run's own config.yaml names its folder) an evaluation gets a folder of its own
    ckpt = config.get("ckpt_path")
    if subcommand in ("validate", "test") and not ckpt:
        raise UserError(f"{subcommand} needs --ckpt_path: best or last (of this experiment's newest run) or a checkpoint "
                        "file; without one it would score untrained weights")
    if ckpt in ("last", "best") and root is None:
        raise UserError(f"--ckpt_path {ckpt} needs a TensorBoard/CSV logger config to find the run; pass a checkpoint path")
    if ckpt in ("last", "best"):
        config.ckpt_path = newest(root, ckpt, logger, subcommand)
    if not config.get("ckpt_path"):
        return None
    ckpt = read_checkpoint(config.ckpt_path)
    expect_kind(config.ckpt_path, ckpt, task, command)
    if subcommand == "fit":
        checks.check_resumed_settings(config, ckpt)
        checks.check_resumed_length(config, ckpt)
        checks.check_resumed_schedule(config, ckpt)
        checks.check_resumed_batches(config, ckpt)
    else:  # evaluated with its own vocabulary (its tokenizer travels in it): the embedding takes its size
        vocab = ckpt.get("hyper_parameters", {}).get("encoder", {}).get("init_args", {}).get("vocab_size")
        if vocab and "vocab_size" in (config.get("data") or {}):
            config.data.vocab_size = vocab
    return ckpt


def newest(root: Path, which: str, logger, subcommand: str) -> str:
    """`--ckpt_path last` or `best`: that checkpoint of the experiment's newest run."""
    found = newest_checkpoint(root, which)
    if not found:
        raise UserError(f"--ckpt_path {which}: no {which} checkpoint under {root}; train first (imdb-lightning fit)")
    run, ckpt = found
    if subcommand == "fit":  # carry on in the same folder, with the same logs
        logger.init_args.version = run_version(run)
        print(f"Resuming {ckpt}", file=sys.stderr)
    return str(ckpt)


def take_pretrained_vocabulary(config) -> None:
    """A fine-tune reads with its language model's vocabulary, and sizes its embedding to it."""
    pretrained = config.model.get("pretrained")
    if pretrained:
        vocab = resolve(pretrained).vocab_size
        config.data.tokenizer_from, config.data.vocab_size = pretrained, vocab
        config.model.encoder.init_args.vocab_size = vocab


# --- the command lines ----------------------------------------------------------------------------------------


class ExperimentCLI(LightningCLI):
    """LightningCLI for fit / validate / test: it parses the command line, settles what it names and saves the
    run's configuration; `experiment.run_experiment` runs the subcommand. Besides LightningCLI's own:

    - `--ckpt_path last` on fit resumes the newest run of the experiment in its own version folder
      (plain Lightning would start a new, empty one), checked against what its checkpoint was trained
      with; on validate/test (which need a checkpoint) `last` and `best` name that run's checkpoints.
    - a checkpoint path is checked before anything runs (exists, readable, of the right model).
    - `--trainer.default_root_dir DIR` moves the runs under DIR (the logger's relative save_dir).
    """

    task = "sentiment"  # the kind of checkpoint this command reads (checkpoints.py)
    command = "imdb-lightning {}"  # its name in messages, with the subcommand
    checkpoint: Optional[dict] = None  # the checkpoint of --ckpt_path, read

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # `imdb-lightning predict` is the project's own command (serve/predict.py), not Lightning's.
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name != "predict"}

    def command_config(self) -> tuple[Optional[str], object]:
        """The subcommand and its config; with run=False (sweep, tune) no subcommand and the whole config."""
        subcommand = self.config.get("subcommand", None)
        return subcommand, self.config.get(subcommand) if subcommand else self.config

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # Here, before LightningCLI reads a checkpoint's hyperparameters into the config and seeds everything.
        subcommand, config = self.command_config()
        check_seeds(config)
        if subcommand is not None:
            self.checkpoint = settle_checkpoint(config, subcommand, self.task, self.command.format(subcommand))

    def before_instantiate_classes(self) -> None:
        checks.check_buildable(self.command_config()[1])

    def after_instantiate_classes(self) -> None:
        """The run's record gets the configuration this segment runs with (what config.yaml holds for a new run)."""
        subcommand, config = self.command_config()
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for callback in self.trainer.callbacks:
            if isinstance(callback, RunRecord):
                callback.configuration = resolved.get(subcommand, resolved) if subcommand else resolved
                callback.settings_from = "command line" if config.get("data_settings") == "command_line" else "checkpoint"

    # LightningCLI runs a subcommand as the method of its name, given the model, the data and the subcommand's
    # own options (ckpt_path, ...).
    def fit(self, model, datamodule, **options) -> None:
        run_experiment(self, "fit", **options)

    def validate(self, model, datamodule, **options) -> None:
        run_experiment(self, "validate", **options)

    def test(self, model, datamodule, **options) -> None:
        run_experiment(self, "test", **options)


class SentimentCLI(ExperimentCLI):
    @staticmethod
    def add_arguments_to_parser(parser) -> None:
        # The vocabulary cap is known when the config is parsed, so the embedding can be sized then.
        parser.link_arguments("data.vocab_size", "model.encoder.init_args.vocab_size", apply_on="parse")
        parser.add_argument("--data_settings", choices=("checkpoint", "command_line"), default="checkpoint",
                            help="validate/test: read the data settings that define a checkpoint's figures (preprocessing; "
                            "validate: its split and training reviews) from the checkpoint, or from this command line")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand, config = self.command_config()  # a sweep's runs too, which parse no subcommand
        take_pretrained_vocabulary(config)
        if subcommand == "fit" and config.get("data_settings") == "command_line":
            raise UserError("--data_settings command_line is for validate and test; a fit reads its data settings from this "
                            "command line, and a resumed fit always goes on with its checkpoint's data")
        if self.checkpoint is not None and subcommand == "fit":
            checks.check_resumed_data(config, self.checkpoint)
        elif self.checkpoint is not None:
            checks.checkpoint_data(config, self.checkpoint, subcommand)


class PretrainCLI(ExperimentCLI):
    """`imdb-lightning pretrain`: the language model over the corpus, with fit's checkpoints and resume."""

    task = "language_model"
    command = "imdb-lightning pretrain"

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": LightningCLI.subcommands()["fit"]}

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.vocab_size", "model.encoder.init_args.vocab_size", apply_on="parse")
        # a backward language model (encoder reverse: true) reads the corpus backwards
        parser.link_arguments("model.encoder.init_args.reverse", "data.reverse", apply_on="parse")


class RunConfig(SaveConfigCallback):
    """config.yaml: the configuration a run started with. A resume never rewrites it (its own configuration,
    and what it changed, is a segment of run.json); a fit writes it once its checkpoint, if any, is restored
    and checked, so a refused resume changes no file."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer, pl_module) -> None:
        resumed_here = trainer.ckpt_path is not None and (Path(trainer.log_dir) / CONFIG).is_file()
        if not trainer.strategy.broadcast(resumed_here):  # (rank 0's answer: every process then takes the same path)
            super().setup(trainer, pl_module, "fit")


def make_cli(args: Optional[list[str]] = None, run: bool = True, cli_class: type[ExperimentCLI] = SentimentCLI,
             model_class: type = SentimentClassifier, datamodule_class: type = IMDBDataModule,
             defaults: str = DEFAULTS, other_command: str = "forecast fit") -> ExperimentCLI:
    """The LightningCLI; `args` as on the command line (e.g. ["fit", "--config", ...]), or without
    the subcommand when `run` is False."""
    args = expand_configs(list(sys.argv[1:] if args is None else args), datamodule_class, other_command)
    # Errors raise instead of printing usage: cli_main prints them as one line.
    kwargs = {"default_config_files": [COMMON_DEFAULTS, defaults], "exit_on_error": False}
    with warnings.catch_warnings():  # args come from our own command table, not sys.argv: that is intended
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return cli_class(
            model_class, datamodule_class, args=args, run=run, save_config_callback=RunConfig,
            parser_kwargs=kwargs if not run else {"exit_on_error": False, **{cmd: kwargs for cmd in cli_class.subcommands()}},
            save_config_kwargs={"overwrite": True},
        )


@functools.cache
def reading_parser() -> LightningArgumentParser:
    """fit's options as a sweep's runs parse them (no subcommand), to read a configuration without building
    anything. The encoder may be left out: commands that read only the data or logger settings take
    data-only YAMLs."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.cli import LRSchedulerTypeTuple
    from torch import nn
    from torch.optim import Optimizer

    parser = LightningArgumentParser(default_config_files=[COMMON_DEFAULTS, DEFAULTS], exit_on_error=False)
    parser.add_argument("-c", "--config", action=ActionConfigFile)
    parser.add_argument("--seed_everything", type=Union[bool, int], default=True)
    parser.add_lightning_class_args(Trainer, "trainer")
    parser.add_class_arguments(SentimentClassifier, "model", fail_untyped=False, sub_configs=True, skip={"encoder"})
    parser.add_subclass_arguments(nn.Module, "model.encoder", required=False)
    parser.add_lightning_class_args(IMDBDataModule, "data")
    parser.add_optimizer_args((Optimizer,))
    parser.add_lr_scheduler_args(LRSchedulerTypeTuple)
    SentimentCLI.add_arguments_to_parser(parser)
    return parser


def read_config(configs: list[str], overrides: list[str] = ()) -> object:
    """The merged configuration of `--config` files and flags, parsed (and checked as fit checks it) but not built."""
    args = expand_configs([*(a for c in configs for a in ("--config", c)), *overrides], IMDBDataModule, "forecast fit")
    config = reading_parser().parse_args(args)
    check_seeds(config)
    take_pretrained_vocabulary(config)
    return config


def main(argv: list[str]) -> None:
    make_cli(argv)


def pretrain_main(argv: list[str]) -> None:
    """`imdb-lightning pretrain --config experiments/pretrain/NAME.yaml`: fit's options, for a language model."""
    make_cli(["fit", *argv], cli_class=PretrainCLI, model_class=LanguageModel, datamodule_class=CorpusDataModule,
             defaults=PRETRAIN_DEFAULTS, other_command="fit")
