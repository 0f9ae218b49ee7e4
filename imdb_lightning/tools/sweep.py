"""`imdb-lightning sweep`: encoders x seeds (x split seeds) x overrides, one run after another, each then tested.

The cells are the waiting trials of an Optuna study (studies.CellQueue); with `--storage URL` any number of
workers share them, each cell run by one. Each run lands in lightning_logs/<encoder>/version_N with a
`run.json` that carries the run's sweep key, by which a cell finds its run again: a finished, tested run is
done, a finished fit is tested, an unfinished one resumes from its last.ckpt (or starts again in its folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from itertools import product
from pathlib import Path

from optuna.distributions import CategoricalDistribution

from ..arguments import ArgumentParser, check_seed, comma_list
from ..callbacks import LastCheckpoint, RunRecord
from ..errors import DataError, UserError
from ..experiment import run_experiment
from ..models.encoders import ENCODERS, class_path
from ..runs import RECORD, best_checkpoint, last_checkpoint, read_record, run_folders, run_version, write_record
from ..training import compose, make_cli
from .studies import CELL, CellQueue, load_study, open_storage


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


def make_run(args: list[str], extra: dict, version: int | None, callbacks: tuple = (), command: str = "sweep"):
    """A run of a sweep (or a tuning trial) in this process, built but not started: LightningCLI with the run's
    record fields, `callbacks` added, and a Ctrl-C that says how to go on."""
    if version is not None:
        args = [*args, "--trainer.logger.init_args.version", str(version)]
    cli = make_cli(args, run=False)
    records = [cb for cb in cli.trainer.callbacks if isinstance(cb, RunRecord)]
    if not records:
        raise UserError("the sweep needs the RunRecord callback (imdb_lightning.callbacks.RunRecord) in trainer.callbacks")
    records[0].extra = extra
    for saver in cli.trainer.callbacks:
        if isinstance(saver, LastCheckpoint):  # (it says "--ckpt_path last" to a fit's user)
            saver.resume_hint = f"Start the same {command} again to go on from there"
    cli.trainer.callbacks.extend(callbacks)
    return cli


def run_one(args: list[str], extra: dict, version: int | None, ckpt: Path | None, callbacks: tuple = (),
            test: bool = True, command: str = "sweep") -> None:
    """Fit (from `ckpt` if given), then test the best checkpoint when there are test data."""
    cli = make_run(args, extra, version, callbacks, command)
    run_experiment(cli, "fit", summary=False, ckpt_path=str(ckpt) if ckpt else None)
    if test and has_test_data(cli):
        run_experiment(cli, "test", summary=False, ckpt_path="best")


def run_test_only(args: list[str], extra: dict, version: int | None, ckpt: Path | None, run: Path,
                  command: str = "sweep", record: dict | None = None) -> bool:
    """Test a finished fit's best checkpoint (never fit): False when there are no test data. Given the fit's
    `record` (the test logs into the fit's own folder), the test is added to it rather than replacing it."""
    if ckpt is None or not Path(ckpt).is_file():
        raise UserError(f"{run}: its fit finished but it has no best checkpoint (checkpoints/best*.ckpt) to test")
    cli = make_run(args, extra, version, command=command)
    if record:
        next(cb for cb in cli.trainer.callbacks if isinstance(cb, RunRecord)).record = dict(record)
    if not has_test_data(cli):
        return False
    run_experiment(cli, "test", summary=False, ckpt_path=str(ckpt))
    return True


def has_test_data(cli) -> bool:
    try:
        cli.datamodule.dataset("test")
    except DataError as err:
        print(f"  not tested: {err}", file=sys.stderr)
        return False
    return True


def claim_folder(root: Path, record: dict) -> Path:
    """A new `version_N` under `root` holding `record`: made whole in a hidden folder, then renamed into place
    (atomic), so two workers never get the same N and a kill while claiming leaves no empty version_N."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".claim-", dir=root))
    write_record(staging, record)
    number = max((run_version(p) for p in run_folders(root)), default=-1) + 1
    while True:
        target = root / f"version_{number}"
        if not target.exists():  # (a rename would replace an empty folder of that name)
            try:
                os.rename(staging, target)
                return target
            except OSError:  # taken in between
                pass
        number += 1


def override_flags(overrides: list[str]) -> list[str]:
    """["trainer.max_epochs=5"] -> ["--trainer.max_epochs", "5"]."""
    flags = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: write KEY=VALUE, e.g. trainer.max_epochs=5")
        flags += [f"--{key}", value]
    return flags


def refused_setting(err: Exception, where: dict[str, str]) -> UserError:
    """The recipe's parser refusing a setting a sweep or study was given, as one line naming where the setting
    came from (`where`: {dotted key: "--set key=value" or the search-space file})."""
    text = " ".join(str(err).split())
    unknown = re.findall(r"--([\w.]+)", text.partition("unrecognized arguments:")[2])
    named = re.search(r'key "([\w.]+)"', text)
    for key in [*unknown, *([named.group(1)] if named else [])]:
        if key in where:
            if key in unknown:
                return UserError(f"{where[key]}: {key} is not a setting of the recipe (`imdb-lightning fit --config "
                                 "RECIPE --print_config` lists them)")
            return UserError(f"{where[key]}: the recipe refuses it ({text})")
    return UserError(f"the recipe refuses a setting: {text}")


def set_sources(overrides: list[str]) -> dict[str, str]:
    """{dotted key: "--set key=value"} of a command's --set overrides, for refused_setting."""
    return {item.partition("=")[0]: f"--set {item}" for item in overrides}


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


class Grid:
    """A sweep's cells and how one of them is run: found in its folder (by the sweep key its record holds) and
    taken on from where it is: a finished, tested run is done; a finished fit is tested; an unfinished one goes
    on from its last.ckpt (or starts again in its folder when it saved none)."""

    def __init__(self, encoders, seeds, configs, overrides, logdir: str, split_seeds=None):
        self.per_encoder = encoder_configs(encoders, configs)
        self.overrides, self.flags, self.logdir = overrides, override_flags(overrides), Path(logdir)
        if split_seeds and any(item.partition("=")[0] == "data.split_seed" for item in overrides):
            raise UserError("--split_seeds and --set data.split_seed=... both name the split; give one of them")
        self.own = own_recipes(configs)
        self.cells = {f"{e} seed {seed}" + ("" if split is None else f" split seed {split}"): (e, split, seed)
                      for e, split, seed in product(encoders, split_seeds or [None], seeds)}

    def args(self, encoder: str, split_seed: int | None, seed: int) -> list[str]:
        files, preset = self.per_encoder[encoder]
        return [*[a for c in files for a in ("--config", c)], *preset, "--seed_everything", str(seed),
                "--trainer.logger.init_args.save_dir", str(self.logdir), "--trainer.logger.init_args.name", encoder,
                *self.flags, *([] if split_seed is None else ["--data.split_seed", str(split_seed)])]

    def check(self) -> None:
        """Every encoder's run can be built (an unknown --set key, a value out of its range) before any database
        or folder is made: the model, data and trainer are made, nothing is run or written."""
        from jsonargparse import ArgumentError

        for encoder in self.per_encoder:
            _, split_seed, seed = next(c for c in self.cells.values() if c[0] == encoder)
            try:
                make_cli(self.args(encoder, split_seed, seed), run=False)
            except ArgumentError as err:
                raise refused_setting(err, set_sources(self.overrides)) from err

    def study_name(self) -> str:
        files = sorted({c for f, _ in self.per_encoder.values() for c in f})
        return ("sweep-" + sweep_key("grid", 0, files, self.overrides, None) + "-"
                + hashlib.sha1(json.dumps(list(self.cells)).encode()).hexdigest()[:8])

    def run_cell(self, trial, label: str) -> float:
        """One attempt at a cell; its value in the study is the run's best validation figure."""
        encoder, split_seed, seed = self.cells[label]
        files, _ = self.per_encoder[encoder]
        info = {"encoder": encoder, "seed": seed, **({} if split_seed is None else {"split_seed": split_seed})}
        key = sweep_key(encoder, seed, files, self.overrides, split_seed, own_recipe=self.own)
        extra = {"sweep_key": key, **info}
        folder, record = existing_run(self.logdir, encoder, key)
        claimed = folder is None
        if claimed:
            folder = claim_folder(self.logdir / encoder, {**extra, "status": "claimed"})
            record = read_record(folder)
        trial.set_user_attr("run", str(folder.resolve()))
        try:
            go_on(label, folder, record, extra, self.args(encoder, split_seed, seed))
        except UserError:
            if claimed and [p.name for p in folder.iterdir()] == [RECORD]:  # refused before it began: no trace
                shutil.rmtree(folder, ignore_errors=True)
            raise
        record = read_record(folder)
        figure = record.get("best_val_acc", record.get("best"))
        if figure is None:
            raise UserError(f"{folder}: the run recorded no best validation figure (is there a validation split?)")
        return float(figure)


def go_on(label: str, folder: Path, record: dict, extra: dict, args: list[str]) -> None:
    """Take a cell's run on from where it is: done, tested, resumed, or started in its folder."""
    version = run_version(folder)
    if record.get("status") == "finished" and "test" in record:
        say(f"{label}: finished and tested in {folder}, skipped")
    elif record.get("status") == "finished":
        say(f"{label}: its fit finished in {folder}; testing its best checkpoint")
        # (the record stays "finished" while it is tested: the test is added to it)
        run_test_only(args, extra, version, best_checkpoint(folder), folder, record=record)
    else:
        ckpt = last_checkpoint(folder)
        say(f"{label}: " + (f"resuming {ckpt}" if ckpt else f"starting in {folder}"))
        run_one(args, extra, version, ckpt)


def say(message: str) -> None:
    print(f"[sweep] {message}", file=sys.stderr, flush=True)


def sweep(encoders: list[str], seeds: list[int], configs: list[str], overrides: list[str], logdir: str,
          split_seeds: list[int] | None = None, storage: str | None = None, study: str | None = None,
          heartbeat: int = 60, max_retries: int = 3, null_pool: bool = False) -> dict:
    """Run the grid's cells, each once, with any number of workers sharing `storage`. Returns the final progress
    ({"complete": {label: trial}, "failed": {label: [trials]}, ...}); failed cells are an error."""
    import optuna

    grid = Grid(encoders, seeds, configs, overrides, logdir, split_seeds)
    grid.check()
    # Alone (no --storage) the study lives in memory and the run folders say what is done; with a shared
    # database every worker started with the same sweep takes the next waiting cell (studies.CellQueue).
    backend = open_storage(storage, Path(logdir), heartbeat, retry_stale=False, null_pool=null_pool) if storage else None
    labels = list(grid.cells)
    found = load_study(backend, study or grid.study_name(), {CELL: CategoricalDistribution(labels)},
                       sampler=optuna.samplers.RandomSampler(seed=0))
    queue = CellQueue(found, backend, labels, max_retries)
    progress = queue.run(grid.run_cell, wait_s=heartbeat, say=say)
    if progress["failed"]:
        lines = [f"{label} ({len(tried)} attempts; last: {tried[-1].user_attrs.get('error', 'its worker stopped')})"
                 for label, tried in progress["failed"].items()]
        raise UserError(f"sweep: {len(lines)} of {len(labels)} cells failed: {'; '.join(lines)}; the others are done. "
                        f"Fix the cause and start the sweep again with --max_retries {max_retries + 1} or more")
    return progress


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
    parser.add_argument("--null_pool", action="store_true",
                        help="keep no database connection between calls (for more workers than the server takes "
                        "connections; docs/tuning.md)")
    parser.add_argument("--heartbeat", type=int, default=60, help="seconds between a worker's heartbeats (with --storage)")
    parser.add_argument("--max_retries", type=int, default=3,
                        help="a cell that fails (raises, or its worker dies) is run again this many times, then "
                        "reported as failed")
    opts = parser.parse_args(argv)
    if opts.heartbeat < 1:
        raise UserError(f"--heartbeat must be at least 1 second, got {opts.heartbeat}")
    if opts.max_retries < 0:
        raise UserError(f"--max_retries must be 0 or more, got {opts.max_retries}")
    for option, seeds in (("--seeds", opts.seeds), ("--split_seeds", opts.split_seeds or [])):
        for seed in seeds:
            check_seed(option, seed)
    try:
        sweep(opts.encoders, opts.seeds, opts.config, opts.set, opts.logdir, opts.split_seeds, opts.storage, opts.study,
              opts.heartbeat, opts.max_retries, opts.null_pool)
    except KeyboardInterrupt:
        print("\n[sweep] interrupted: start the same sweep again to go on (each cell resumes from its last.ckpt)",
              file=sys.stderr)
        raise SystemExit(130) from None
    pool = " --over_splits" if opts.split_seeds else ""
    print(f"[sweep] done; compare with: imdb-lightning compare {opts.logdir}{pool}", file=sys.stderr)
