"""`imdb-lightning fit | validate | test`: LightningCLI over the sentiment classifier and IMDB data.

LightningCLI parses the command line and YAML, prints (`--print_config`) and saves each run's
configuration. `ExperimentCLI` adds what this project's runs expect of it; the forecaster's
command line (forecast/cli.py) is the same class over other model and data classes.
"""

from __future__ import annotations

import inspect
import sys
import warnings
from pathlib import Path
from typing import Optional

import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from .arguments import check_seed
from .callbacks import RunRecord
from .checkpoints import data_identity, data_settings, expect_kind, read_checkpoint
from .data.corpus import CorpusDataModule
from .data.datamodule import IMDBDataModule
from .data.identity import LOCATION, PREPROCESSING, SOURCE, SPLIT, changed_meaning, refuse_change, same_setting
from .data.tokenizer import check_words
from .errors import UserError
from .machine import NO_BF16, available_memory, check_writable, cpu_runs_bf16
from .models.base import sized_by_steps
from .models.classifier import SentimentClassifier
from .models.encoders import count_parameters
from .models.language_model import LanguageModel
from .pretrained import check_unread, resolve
from .runs import CONFIG, RECORD, experiment_root, newest_checkpoint, read_record, run_version
from .summary import fit_summary, say, test_summary

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


def check_resumed_settings(config, ckpt: dict) -> None:
    """A resumed fit goes on with the checkpoint's model: LightningCLI takes every model setting saved in
    it (the encoder and its sizes, dropout, adversarial, lr_decay, ...) over the command line's. So one
    that differs is refused here, naming it, rather than dropped silently. Settings not saved in the
    model (optimizer, schedule, trainer, data) apply; a changed learning rate is applied on resume."""
    saved = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    mine = config.model.as_dict() if hasattr(config.model, "as_dict") else dict(config.model)
    for key, old, new in _differences(saved, mine):
        hint = " (data.vocab_size sets it)" if key.endswith("vocab_size") else ""
        raise UserError(f"--ckpt_path {config.ckpt_path}: its run used model.{key}={old}, this one {new}{hint}; a resumed fit "
                        "goes on with the checkpoint's model: resume with its settings, or start a new run without --ckpt_path")


def check_resumed_length(config, ckpt: dict) -> None:
    """A resume that has nothing to train, or that Lightning would refuse (fewer epochs than the checkpoint
    has trained), is refused here, before anything is written, saying how to go on."""
    done = {"max_epochs": ckpt.get("epoch"), "max_steps": ckpt.get("global_step")}
    run = Path(config.ckpt_path).parent.parent
    finished = (run / RECORD).is_file() and read_record(run).get("status") == "finished"
    for key, unit in (("max_epochs", "epochs"), ("max_steps", "steps")):
        limit, trained = config.trainer.get(key), done[key]
        if limit in (None, -1) or trained is None or trained < limit or (trained == limit and not finished):
            continue
        state = (f"has trained {trained} {unit} already" if trained > limit else
                 f"has trained its {trained} {unit}: nothing is left to train")
        raise UserError(f"--trainer.{key} {limit}: {config.ckpt_path} {state}; to train on, resume with --trainer.{key} "
                        f"{trained + 1} or more (a fit of {limit} {unit[:-1] if limit == 1 else unit} is a new run: leave "
                        "out --ckpt_path). Nothing was changed")


def check_resumed_batches(config, ckpt: dict) -> None:
    """A checkpoint saved mid-epoch resumes after the batches that epoch had trained, counted in batches: at
    another batch size that count would skip other reviews (some trained twice in the epoch, some never)."""
    position = next((state["train_position"] for state in ckpt.values()
                     if isinstance(state, dict) and isinstance(state.get("train_position"), dict)), {})
    done, saved = position.get("batches_done", 0), data_settings(ckpt).get("batch_size")
    wanted = (config.get("data") or {}).get("batch_size")
    if done and saved is not None and wanted is not None and wanted != saved:
        raise UserError(f"--data.batch_size {wanted}: {config.ckpt_path} was saved {done} batches of {saved} into epoch "
                        f"{position.get('epoch')}; resume with --data.batch_size {saved} (a new batch size can start from a "
                        "checkpoint saved at an epoch's end). Nothing was changed")


def namespace_dict(section) -> dict:
    if hasattr(section, "as_dict"):
        return section.as_dict()
    return {k: v for k, v in vars(section).items() if not k.startswith("__")}


def checkpoint_data(config, ckpt: dict, subcommand: str) -> None:
    """`validate` and `test` read the data settings that define a checkpoint's figures from the checkpoint
    (as `predict` does): its preprocessing, and for `validate` its split and training reviews. With
    `--data_settings command_line` they keep this command line's; either way a difference is said in
    one line, and run.json records which were used."""
    saved, data = data_settings(ckpt), config.data
    keys = PREPROCESSING if subcommand == "test" else (*PREPROCESSING, *SPLIT, *SOURCE)
    # where the reviews are: the checkpoint's, unless this command line names its own (then checked by digest)
    named = (subcommand == "test" and data.test_files) or data.train_files or data.aclimdb_dir or data.source
    if not named:
        keys += tuple(k for k in LOCATION if subcommand == "validate" or k != "train_files")
    differ = [(key, saved[key], data[key]) for key in keys if key in saved and not same_setting(saved[key], data[key])]
    if not differ:
        return
    if config.get("data_settings") == "command_line":
        said = ", ".join(f"data.{key} {new} (the checkpoint's: {old})" for key, old, new in differ)
        print(f"{subcommand}: with this command line's data settings, not the checkpoint's: {said}; run.json records it",
              file=sys.stderr)
        return
    for key, old, _ in differ:
        data[key] = old
    said = ", ".join(f"data.{key} {old} (this command line: {new})" for key, old, new in differ)
    print(f"{subcommand}: with the checkpoint's data settings, which define what its figures mean: {said}; "
          "--data_settings command_line evaluates with this command line's instead", file=sys.stderr)


def _differences(saved: dict, mine: dict, prefix: str = ""):
    for key in saved.keys() & mine.keys():
        old, new = saved[key], mine[key]
        if isinstance(old, dict) and isinstance(new, dict):
            yield from _differences(old, new, f"{prefix}{key}.")
        elif (list(old) if isinstance(old, (list, tuple)) else old) != (list(new) if isinstance(new, (list, tuple)) else new):
            yield f"{prefix}{key}", old, new


def check_accelerator(trainer_config) -> None:
    """An accelerator this machine lacks (a GPU, a TPU) or that does not exist: one line, as `bench
    --accelerator gpu` gives, rather than Lightning's error from deep inside (a missing torch_xla, say)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    accelerator = trainer_config.get("accelerator")
    if not isinstance(accelerator, str) or accelerator.lower() == "auto":
        return
    name = accelerator.lower()
    known = {*AcceleratorRegistry.available_accelerators(), "gpu"}
    if name not in known:
        raise UserError(f"--trainer.accelerator {accelerator}: no such accelerator; use one of auto, {', '.join(sorted(known))}")

    def available(name: str) -> bool:
        try:
            return bool(AcceleratorRegistry[name]["accelerator"].is_available())
        except Exception:  # noqa: BLE001  (its library is missing: torch_xla for a TPU)
            return False

    if not (available("cuda") or available("mps") if name == "gpu" else available(name)):
        device = {"gpu": "GPU", "cuda": "CUDA GPU", "mps": "Apple GPU (MPS)"}.get(name, name.upper())
        raise UserError(f"--trainer.accelerator {accelerator}: no {device} is available here; leave the option out "
                        "(or --trainer.accelerator cpu) to run on the CPU")


TRAINING_BYTES = 16  # per fp32 parameter while training on a CPU: the weight, its gradient and Adam's two moments


def check_model_fits(model_config, on_cpu: bool) -> None:
    """A model larger than the memory left (a vocabulary cap of 100 million words, say) is refused before it
    is built: built, it would have the kernel kill the fit later, without a word."""
    encoder = model_config.get("encoder") if hasattr(model_config, "get") else None
    class_path, init = getattr(encoder, "class_path", None), getattr(encoder, "init_args", None)
    if not isinstance(class_path, str):
        return
    kwargs = init.as_dict() if hasattr(init, "as_dict") else dict(init or {})
    try:
        parameters = count_parameters({"class_path": class_path, "init_args": kwargs})
    except UserError:  # a setting the encoder refuses, in its own words
        raise
    except RuntimeError as err:  # sizes whose byte count overflows 64 bits; else an operation meta tensors lack
        if "overflow" in str(err):
            raise UserError(f"model.encoder: far too large to build ({str(err).splitlines()[0]}); lower its sizes") from err
        return
    except Exception:  # noqa: BLE001  (building it for real says what is wrong)
        return
    need, free = parameters * (TRAINING_BYTES if on_cpu else 4), available_memory()
    if free is None or need <= free:
        return
    vocab, width = kwargs.get("vocab_size"), kwargs.get("embed_dim")
    if isinstance(vocab, int) and isinstance(width, int) and vocab * width > parameters / 2 and vocab > width:
        hint = (f"; most of it is the word embedding, data.vocab_size {vocab:,} x embed_dim {width}: the cap counts rows "
                "for words, and rows beyond the words the training data hold are never used, so lower --data.vocab_size")
    elif isinstance(width, int) and isinstance(vocab, int) and vocab * width > parameters / 2:
        hint = f"; most of it is the word embedding, data.vocab_size {vocab:,} x embed_dim {width:,}: lower embed_dim"
    else:
        hint = "; lower its sizes"
    purpose = "train here (weights, gradients and Adam's state)" if on_cpu else "build"
    raise UserError(f"model.encoder: {parameters:,} parameters need about {need / 2**30:.1f} GiB to {purpose}, and this "
                    f"machine has {free / 2**30:.1f} GiB free{hint}")


def logged_runs_root(trainer_config) -> Optional[Path]:
    """The experiment's run folder root from a parsed trainer config (its logger and default_root_dir)."""
    init = getattr(trainer_config.logger, "init_args", None)
    return experiment_root(getattr(init, "save_dir", None), getattr(init, "name", None), trainer_config.get("default_root_dir"))


class ExperimentCLI(LightningCLI):
    """LightningCLI for fit / validate / test, plus:

    - `--ckpt_path last` on fit resumes the newest run of the experiment in its own version folder
      (plain Lightning would start a new, empty one), checked against what its checkpoint was trained
      with; on validate/test (which need a checkpoint) `last` and `best` name that run's checkpoints.
    - a checkpoint path is checked before anything runs (exists, readable, of the right model).
    - `--trainer.default_root_dir DIR` moves the runs under DIR (the logger's relative save_dir).
    """

    task = "sentiment"  # the kind of checkpoint this command reads (checkpoints.py)
    checkpoint: Optional[dict] = None  # the checkpoint of --ckpt_path, read

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # `imdb-lightning predict` is the project's own command (serve/predict.py), not Lightning's.
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name != "predict"}

    def command_config(self) -> tuple[Optional[str], object]:
        """The subcommand and its config; with run=False (sweep, read_config) no subcommand and the whole config."""
        subcommand = self.config.get("subcommand", None)
        return subcommand, self.config.get(subcommand) if subcommand else self.config

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # Here, before LightningCLI reads a checkpoint's hyperparameters into the config.
        subcommand, config = self.command_config()
        if config is not None:  # (before LightningCLI seeds everything with it)
            check_seed("--seed_everything", config.get("seed_everything"))
            data = config.get("data")
            check_seed("--data.split_seed", data.get("split_seed") if hasattr(data, "get") else None)
        if subcommand is None or config is None:
            return
        logger = config.trainer.logger
        root = logged_runs_root(config.trainer)
        if root is not None:  # the runs of --trainer.default_root_dir DIR land under DIR
            logger.init_args.save_dir = str(root.parent)
            check_writable(root.parent, "--trainer.default_root_dir" if config.trainer.get("default_root_dir")
                           else "--trainer.logger.init_args.save_dir")
        ckpt = config.get("ckpt_path")
        if subcommand in ("validate", "test") and not ckpt:
            raise UserError(f"{subcommand} needs --ckpt_path: best or last (of this experiment's newest run) or a checkpoint "
                            "file; without one it would score untrained weights")
        if ckpt in ("last", "best") and root is not None:
            config.ckpt_path = self._newest(root, ckpt, logger, subcommand)
        elif ckpt in ("last", "best"):
            raise UserError(f"--ckpt_path {ckpt} needs a TensorBoard/CSV logger config to find the run; pass a checkpoint path")
        if config.get("ckpt_path"):
            self.checkpoint = ckpt = read_checkpoint(config.ckpt_path)
            expect_kind(config.ckpt_path, ckpt, self.task, f"imdb-lightning {subcommand}")
            if subcommand == "fit":
                check_resumed_settings(config, ckpt)
                check_resumed_length(config, ckpt)
                check_resumed_batches(config, ckpt)
            else:  # evaluated with its own vocabulary (its tokenizer travels in it): the embedding takes its size
                vocab = ckpt.get("hyper_parameters", {}).get("encoder", {}).get("init_args", {}).get("vocab_size")
                if vocab and "vocab_size" in (config.get("data") or {}):
                    config.data.vocab_size = vocab
        version = logger.init_args.get("version") if hasattr(logger, "init_args") else None
        if subcommand != "fit" and root is not None and version is not None and (root / f"version_{version}" / RECORD).is_file():
            logger.init_args.version = None  # (a run's own config.yaml names its folder) an evaluation gets a folder of its own

    def instantiate_classes(self) -> None:
        # Before anything is built: Lightning's own answer to a missing GPU says less, and a model too large
        # for the memory is a kill, with no word, once training touches it.
        import torch

        _, config = self.command_config()
        if config is not None:
            check_accelerator(config.trainer)
            check_model_fits(config.model, on_cpu=config.trainer.get("accelerator") == "cpu" or not torch.cuda.is_available())
        super().instantiate_classes()

    def after_instantiate_classes(self) -> None:
        """The run's record gets the configuration this segment runs with (what config.yaml holds for a new run)."""
        if getattr(self, "trainer", None) is None:
            return
        subcommand, config = self.command_config()
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for callback in self.trainer.callbacks:
            if isinstance(callback, RunRecord):
                callback.configuration = resolved.get(subcommand, resolved) if subcommand else resolved
                callback.settings_from = "command line" if config.get("data_settings") == "command_line" else "checkpoint"

    def before_fit(self) -> None:
        self._check_something_to_do("fit")
        self._check_precision()
        self._check_monitors()
        self._check_optimizer()
        self._check_data("fit")

    def _check_something_to_do(self, stage: str) -> None:
        """A fit told to train nothing, or a test told to test nothing, would end "finished" with no checkpoint
        or figure and no word; a fit that never validates would crash at its first epoch's end, when what watches
        the validation figures (best checkpoint, early stopping, schedule) finds none."""
        trainer, counts = self.trainer, "1 or more"
        batches = "a fraction above 0 or a count"
        options = {"fit": [("max_epochs", trainer.max_epochs, counts), ("max_steps", trainer.max_steps, counts),
                           ("limit_train_batches", trainer.limit_train_batches, batches)],
                   "validate": [("limit_val_batches", trainer.limit_val_batches, batches)],
                   "test": [("limit_test_batches", trainer.limit_test_batches, batches)]}[stage]
        for option, value, wanted in options:
            if value == 0:
                what = {"fit": "trained and no checkpoint written", "validate": "validated", "test": "tested"}[stage]
                hint = " (to score a checkpoint without training: imdb-lightning validate or test --ckpt_path CKPT)"
                raise UserError(f"--trainer.{option} {value:g}: nothing would be {what}; give {wanted}"
                                + (hint if stage == "fit" else ""))
        watched = [monitor for _, monitor in self._watchers() if isinstance(monitor, str) and monitor.startswith("val/")]
        if stage == "fit" and trainer.limit_val_batches == 0 and watched:
            raise UserError(f"--trainer.limit_val_batches 0: nothing would be validated, and {watched[0]} is watched "
                            f"(by the best checkpoint, early stopping or the schedule); give {batches}")
        interval = trainer.val_check_interval  # (Lightning divides by it: 0 is a ZeroDivisionError mid-epoch)
        if stage == "fit" and isinstance(interval, (int, float)) and interval <= 0:
            raise UserError(f"--trainer.val_check_interval {interval}: validate every 1 or more training batches (a "
                            "count) or a fraction of an epoch above 0 (e.g. 0.5)")
        every = trainer.check_val_every_n_epoch
        if stage == "fit" and every is not None and every < 1:
            raise UserError(f"--trainer.check_val_every_n_epoch {every}: validate every 1 or more epochs (or null, with "
                            "--trainer.val_check_interval counting steps)")
        schedule = [m for owner, m in self._watchers() if owner.startswith("model.monitor") and m in watched]
        if stage == "fit" and every and every > 1 and schedule:
            raise UserError(f"--trainer.check_val_every_n_epoch {every}: the learning-rate schedule steps every epoch on "
                            f"{schedule[0]}, which validation would compute every {every} epochs only; validate every epoch, or "
                            "leave the schedule out (--model.scheduler null)")

    def _check_optimizer(self) -> None:
        """A setting torch refuses (a negative learning rate, betas outside [0, 1), a plateau factor of 2) is
        named before the run starts: the optimizer and schedule are built once here, on the model's parameters."""
        optimizer, scheduler = getattr(self.model, "optimizer", None), getattr(self.model, "scheduler", None)
        if not callable(optimizer):
            return
        try:
            built = optimizer(self.model.parameters())
        except (ValueError, TypeError) as err:
            raise UserError(f"model.optimizer: {err}") from err
        if not callable(scheduler):
            return
        try:
            scheduler(built, total_steps=100) if sized_by_steps(scheduler) else scheduler(built)
        except (ValueError, TypeError, ZeroDivisionError) as err:
            raise UserError(f"model.scheduler: {err}") from err

    def after_fit(self) -> None:
        say(fit_summary, self.trainer, self.task)

    def after_test(self) -> None:
        say(test_summary, self.trainer)

    def before_validate(self) -> None:
        self._check_something_to_do("validate")
        self._check_precision()
        self._check_data("validate")

    def before_test(self) -> None:
        self._check_something_to_do("test")
        self._check_precision()
        self._check_data("test")

    def _check_precision(self) -> None:
        """bf16 on a CPU without it ends in a oneDNN error deep inside an LSTM, or a run ten times slower."""
        precision = str(self.trainer.precision)
        if "bf16" in precision and self.trainer.strategy.root_device.type == "cpu" and not cpu_runs_bf16():
            raise UserError(f"--trainer.precision {precision}: {NO_BF16}, so an LSTM would fail and other layers "
                            "run about 10x slower; use --trainer.precision 32-true here, or a GPU")

    def _check_data(self, stage: str) -> None:
        """Read the data before Lightning starts (and makes a run folder): a bad file fails here, in one line."""
        reviews = getattr(self.datamodule, "reviews", None)
        if reviews is not None:
            for split in {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}[stage]:
                reviews(split)

    def _watchers(self) -> list[tuple[str, str]]:
        """(who, metric) for every callback and schedule that watches a metric."""
        watchers = [(f"trainer.callbacks {type(cb).__name__}", cb.monitor) for cb in self.trainer.callbacks
                    if getattr(cb, "monitor", None)]
        if getattr(self.model, "scheduler", None) is not None and not sized_by_steps(self.model.scheduler):
            watchers.append(("model.monitor (the learning-rate schedule's metric)", self.model.hparams.monitor))
        return watchers

    def _check_monitors(self) -> None:
        """Every metric a callback or the schedule watches must be one the model logs."""
        known = getattr(self.model, "metric_names", lambda: None)()
        if not known:
            return
        for owner, monitor in self._watchers():
            if monitor not in known:
                raise UserError(f"{owner}: monitor {monitor!r} is never logged; the model logs {', '.join(sorted(known))}")

    def _newest(self, root: Path, which: str, logger, subcommand: str) -> str:
        found = newest_checkpoint(root, which)
        if not found:
            raise UserError(f"--ckpt_path {which}: no {which} checkpoint under {root}; train first (imdb-lightning fit)")
        run, ckpt = found
        if subcommand == "fit":  # carry on in the same folder, with the same logs
            logger.init_args.version = run_version(run)
            print(f"Resuming {ckpt}", file=sys.stderr)
        return str(ckpt)


class SentimentCLI(ExperimentCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The vocabulary cap is known when the config is parsed, so the embedding can be sized then.
        parser.link_arguments("data.vocab_size", "model.encoder.init_args.vocab_size", apply_on="parse")
        parser.add_argument("--data_settings", choices=("checkpoint", "command_line"), default="checkpoint",
                            help="validate/test: read the data settings that define a checkpoint's figures (preprocessing; "
                            "validate: its split and training reviews) from the checkpoint, or from this command line")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand, config = self.command_config()  # a sweep's runs too, which parse no subcommand
        pretrained = config.model.get("pretrained") if config is not None else None
        if pretrained:  # the language model's vocabulary, and an embedding of its size
            vocab = resolve(pretrained).vocab_size
            config.data.tokenizer_from, config.data.vocab_size = pretrained, vocab
            config.model.encoder.init_args.vocab_size = vocab
        if subcommand == "fit" and config.get("data_settings") == "command_line":
            raise UserError("--data_settings command_line is for validate and test; a resumed fit always goes on with its "
                            "checkpoint's data")
        if self.checkpoint is None:
            return
        if subcommand == "fit":  # the split and preprocessing (the reviews themselves: by digest, as the checkpoint loads)
            meaning = (*SOURCE, *SPLIT, *PREPROCESSING)
            change = changed_meaning(data_settings(self.checkpoint), namespace_dict(config.data), meaning)
            if change:
                raise refuse_change(config.ckpt_path, *change)
        elif subcommand in ("validate", "test"):
            checkpoint_data(config, self.checkpoint, subcommand)

    def _check_data(self, stage: str) -> None:
        super()._check_data(stage)
        if stage == "fit":  # (reviews with no words at all)
            check_words(self.datamodule.reviews("train").texts)
        _, config = self.command_config()
        if stage == "fit" and self.checkpoint is not None:  # the reviews themselves, before Lightning makes any file
            self.datamodule.check_resume(data_identity(self.checkpoint), config.ckpt_path)
        saved = data_identity(self.checkpoint or {}).get("val_digest")
        if stage == "validate" and saved and config.get("data_settings") != "command_line" and \
                self.datamodule.digest("val") != saved:
            raise UserError(f"--ckpt_path {config.ckpt_path}: the validation reviews carved from these training data differ "
                            "from the ones its fit validated on (other training files, or changed ones); validate with the "
                            "data it was trained on, or pass --data_settings command_line to score it on these (run.json "
                            "then says so)")
        if self.model.hparams.get("pretrained"):  # the language model must not have read what is scored
            split = "test" if stage == "test" else "val"
            check_unread(resolve(self.model.hparams.pretrained), self.datamodule.reviews(split).texts, split,
                         dict(self.datamodule.hparams))


class PretrainCLI(ExperimentCLI):
    """`imdb-lightning pretrain`: the language model over the corpus, with fit's checkpoints and resume."""

    task = "language_model"

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": LightningCLI.subcommands()["fit"]}

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.vocab_size", "model.encoder.init_args.vocab_size", apply_on="parse")
        # a backward language model (encoder reverse: true) reads the corpus backwards
        parser.link_arguments("model.encoder.init_args.reverse", "data.reverse", apply_on="parse")

    def _check_data(self, stage: str) -> None:
        self.datamodule.stream("train")  # read and tokenize before a run folder exists: a bad file fails here


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


def read_config(configs: list[str], overrides: list[str] = ()) -> object:
    """The merged configuration of `--config` files and flags, parsed but not instantiated. Commands
    that read only its data or logger settings need no model: a stand-in encoder fills the gap."""

    class ParseOnly(SentimentCLI):
        def instantiate_classes(self) -> None:
            pass

    stand_in = ["--model.encoder", "imdb_lightning.models.encoders.NBoWEncoder"]
    args = stand_in + [a for c in configs for a in ("--config", c)] + list(overrides)
    return make_cli(args, run=False, cli_class=ParseOnly).config


def main(argv: list[str]) -> None:
    make_cli(argv)


def pretrain_main(argv: list[str]) -> None:
    """`imdb-lightning pretrain --config experiments/pretrain/NAME.yaml`: fit's options, for a language model."""
    make_cli(["fit", *argv], cli_class=PretrainCLI, model_class=LanguageModel, datamodule_class=CorpusDataModule,
             defaults=PRETRAIN_DEFAULTS, other_command="fit")
