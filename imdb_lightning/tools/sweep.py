"""`imdb-lightning sweep`: encoders x seeds (x split seeds) x overrides, one run after another, each then tested.

The cells are an Optuna grid study; with `--storage URL` any number of workers share them.
Each run lands in lightning_logs/<encoder>/version_N with a `run.json` that carries the run's
sweep key. Running the same sweep again skips finished runs and resumes unfinished ones from
their last.ckpt (or starts them again in the same folder).
"""

from __future__ import annotations

import hashlib
import json
import sys
from itertools import product
from pathlib import Path

from ..callbacks import RunRecord
from ..errors import DataError, UserError
from ..helpers import ArgumentParser, check_seed, comma_list
from ..models.encoders import ENCODERS, class_path
from ..runs import claim_version, last_checkpoint, read_record, run_folders, run_version
from ..training import compose, make_cli
from .studies import load_study, open_storage


def sweep_key(encoder: str, seed: int, configs: list[str], overrides: list[str], split_seed: int | None = None,
              own_recipe: bool = False) -> str:
    # the contents of the configs and of their base: files, so editing a shared recipe makes new runs
    # (compose gives file paths and, for a file with a base:, its own keys as YAML text, never a path)
    contents = [a if "\n" in a or not Path(a).is_file() else Path(a).read_text() for c in configs for a in compose(c)]
    # without --split_seeds the key is what it was before that option, so earlier sweeps still resume
    key = [encoder, seed, contents, overrides] + ([] if split_seed is None else [split_seed])
    # runs of an encoder's own recipe made before it kept its encoder settings had the registry's preset
    # laid over them (a one-way tuned SimpleRNN): they are not this cell's runs
    key += ["own recipe"] if own_recipe else []
    return hashlib.sha1(json.dumps(key).encode()).hexdigest()[:12]


def existing_run(logdir: Path, encoder: str, key: str) -> tuple[Path | None, dict]:
    for run in run_folders(logdir / encoder):
        try:
            record = read_record(run)
        except UserError:  # a damaged record is not this cell's run
            continue
        if record.get("sweep_key") == key:
            return run, record
    return None, {}


def run_one(args: list[str], extra: dict, version: int | None, ckpt: Path | None, callbacks: tuple = (),
            test: bool = True, test_only: Path | None = None) -> None:
    """One run of a sweep (or a tuning trial) in this process: fit (from `ckpt` if given), then test the best
    checkpoint when there are test data; `test_only`: test that checkpoint, no fit."""
    if version is not None:
        args = [*args, "--trainer.logger.init_args.version", str(version)]
    cli = make_cli(args, run=False)
    records = [cb for cb in cli.trainer.callbacks if isinstance(cb, RunRecord)]
    if not records:
        raise UserError("the sweep needs the RunRecord callback (imdb_lightning.callbacks.RunRecord) in trainer.callbacks")
    records[0].extra = extra
    cli.trainer.callbacks.extend(callbacks)
    if test_only is not None:
        cli.before_test()
        cli.trainer.test(cli.model, cli.datamodule, ckpt_path=str(test_only))
        return
    cli.before_fit()  # fit's own checks (precision, monitors, data), which a run=False CLI skips
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=str(ckpt) if ckpt else None)
    if not test:
        return
    try:
        cli.datamodule.dataset("test")
    except DataError as err:
        print(f"  not tested: {err}", file=sys.stderr)
        return
    cli.trainer.test(cli.model, cli.datamodule, ckpt_path="best")


def override_flags(overrides: list[str]) -> list[str]:
    """["trainer.max_epochs=5"] -> ["--trainer.max_epochs", "5"]."""
    flags = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: write KEY=VALUE, e.g. trainer.max_epochs=5")
        flags += [f"--{key}", value]
    return flags


def encoder_configs(encoders: list[str | None], configs: list[str]) -> dict:
    """{encoder: (its config files, the flags that make it that encoder)}, every file checked. "{encoder}" in a
    path names each encoder's own recipe (--config 'experiments/tuned/{encoder}.yaml'), whose encoder settings
    stand: tuned/rnn.yaml reads both ways where the registry's "rnn" reads one. Configs shared by every encoder
    get the registry's preset for each. None stands for "the configs as given"."""
    unknown = set(encoders) - set(ENCODERS) - {None}
    if unknown:
        raise UserError(f"unknown encoder(s) {', '.join(sorted(unknown))}; choose from {', '.join(ENCODERS)}")
    own = own_recipes(configs)
    per_encoder = {e: ([c.replace("{encoder}", e or "") for c in configs], [] if own else encoder_args(e))
                   for e in encoders}
    for config in sorted({c for files, _ in per_encoder.values() for c in files}):
        if not Path(config).is_file():
            raise UserError(f"{config}: no such config file")
    return per_encoder


def own_recipes(configs: list[str]) -> bool:
    return any("{encoder}" in c for c in configs)


def encoder_args(encoder: str | None) -> list[str]:
    """The command-line flags that make the encoder a registered name stands for (none for None)."""
    if encoder is None:
        return []
    cls, preset_args = ENCODERS[encoder]
    return ["--model.encoder", class_path(cls), *[f"--model.encoder.init_args.{k}={str(v).lower()}"
                                                   for k, v in preset_args.items()]]


def sweep(encoders: list[str], seeds: list[int], configs: list[str], overrides: list[str], logdir: str,
          split_seeds: list[int] | None = None, storage: str | None = None, study: str | None = None,
          heartbeat: int = 60) -> list[dict]:
    from optuna.distributions import CategoricalDistribution
    from optuna.exceptions import TrialPruned
    from optuna.samplers import GridSampler

    per_encoder = encoder_configs(encoders, configs)
    flags = override_flags(overrides)
    if split_seeds and any(item.partition("=")[0] == "data.split_seed" for item in overrides):
        raise UserError("--split_seeds and --set data.split_seed=... both name the split; give one of them")
    cells = list(product(encoders, split_seeds or [None], seeds))
    labels = [f"{e} seed {seed}" + ("" if split is None else f" split seed {split}") for e, split, seed in cells]
    own = own_recipes(configs)

    def run_cell(encoder: str, split_seed: int | None, seed: int, label: str) -> dict:
        files, preset = per_encoder[encoder]
        key = sweep_key(encoder, seed, files, overrides, split_seed, own_recipe=own)
        folder, record = existing_run(Path(logdir), encoder, key)
        info = {"encoder": encoder, "seed": seed, **({} if split_seed is None else {"split_seed": split_seed})}
        if record.get("status") == "finished":
            print(f"[sweep] {label}: finished in {folder}, skipped", file=sys.stderr)
            return {**info, "folder": str(folder), "skipped": True}
        # a new run's folder is claimed before it starts, so workers starting together never share one
        version = run_version(folder) if folder else claim_version(Path(logdir) / encoder)
        ckpt = last_checkpoint(folder) if folder else None
        print(f"[sweep] {label}: " + (f"resuming {ckpt}" if ckpt else "starting"), file=sys.stderr)
        args = [
            *[a for c in files for a in ("--config", c)], *preset,
            "--seed_everything", str(seed),
            "--trainer.logger.init_args.save_dir", logdir, "--trainer.logger.init_args.name", encoder, *flags,
            *([] if split_seed is None else ["--data.split_seed", str(split_seed)]),
        ]
        run_one(args, {"sweep_key": key, **info}, version, ckpt)
        return {**info, "skipped": False}

    done = []

    def objective(trial) -> float:
        label = trial.suggest_categorical("cell", labels)
        earlier = running_or_done(trial, "cell", label)
        if earlier is not None:  # another worker has this cell (the grid hands out a busy cell near the end)
            trial.set_user_attr("duplicate_of", earlier)
            raise TrialPruned(f"cell {label} is trial {earlier}'s")
        done.append(run_cell(*cells[labels.index(label)], label))
        return 0.0

    # The grid is a study: alone (in memory) it runs every cell once, in the grid's fixed (seeded) order;
    # on a shared --storage, every worker started with the same sweep takes the next cell no one has, and
    # a dead worker's cell is run again (resumed from its last.ckpt) by the next worker to start a cell.
    backend = open_storage(storage, Path(logdir), heartbeat) if storage else None
    name = study or "sweep-" + sweep_key("grid", 0, sorted({c for f, _ in per_encoder.values() for c in f}), overrides,
                                         None) + "-" + hashlib.sha1(json.dumps(labels).encode()).hexdigest()[:8]
    grid = load_study(backend, name, {"cell": CategoricalDistribution(labels)}, sampler=GridSampler({"cell": labels}))
    grid.optimize(objective, catch=())
    return done


def running_or_done(trial, param: str, value) -> int | None:
    """The number of an earlier trial of the study holding the same value that is running or complete, else None."""
    from optuna.trial import TrialState

    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE)):
        if other.number < trial.number and other.params.get(param) == value:
            return other.number
    return None


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="imdb-lightning sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", type=comma_list(), default=["rnn", "lstm", "gru", "bilstm"],
                        help=f"comma-separated, from {','.join(ENCODERS)}")
    parser.add_argument("--seeds", type=comma_list(int), default=[0, 1, 2], help="comma-separated seeds")
    parser.add_argument("--config", action="append", default=[],
                        help="experiment YAML(s), applied in order; {encoder} in a path is replaced by each encoder's name")
    parser.add_argument("--split_seeds", type=comma_list(int), default=None,
                        help="comma-separated data.split_seed values: every run on each of these validation splits "
                        "(pool them with compare --over_splits)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override, as on the fit command line without '--', e.g. trainer.max_epochs=5")
    parser.add_argument("--logdir", default="lightning_logs")
    parser.add_argument("--storage", default=None,
                        help="a database URL (sqlite:///sweep.db, postgresql://...): every sweep started with it "
                        "and the same cells shares them out, none run twice")
    parser.add_argument("--study", default=None, help="the grid's study name (default: one named after the cells)")
    parser.add_argument("--heartbeat", type=int, default=60, help="seconds between a worker's heartbeats (with --storage)")
    opts = parser.parse_args(argv)
    for option, seeds in (("--seeds", opts.seeds), ("--split_seeds", opts.split_seeds or [])):
        for seed in seeds:
            check_seed(option, seed)
    sweep(opts.encoders, opts.seeds, opts.config, opts.set, opts.logdir, opts.split_seeds, opts.storage, opts.study,
          opts.heartbeat)
    pool = " --over_splits" if opts.split_seeds else ""
    print(f"[sweep] done; compare with: imdb-lightning compare {opts.logdir}{pool}", file=sys.stderr)
