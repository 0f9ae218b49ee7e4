"""`imdb-lightning sweep`: encoders x seeds (x split seeds) x overrides, one run after another, each then tested.

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
from ..runs import last_checkpoint, read_record, run_folders, run_version
from ..training import compose, make_cli


def sweep_key(encoder: str, seed: int, configs: list[str], overrides: list[str], split_seed: int | None = None) -> str:
    # the contents of the configs and of their base: files, so editing a shared recipe makes new runs
    # (compose gives file paths and, for a file with a base:, its own keys as YAML text, never a path)
    contents = [a if "\n" in a or not Path(a).is_file() else Path(a).read_text() for c in configs for a in compose(c)]
    # without --split_seeds the key is what it was before that option, so earlier sweeps still resume
    key = [encoder, seed, contents, overrides] + ([] if split_seed is None else [split_seed])
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


def run_one(args: list[str], extra: dict, version: int | None, ckpt: Path | None) -> None:
    if version is not None:
        args = [*args, "--trainer.logger.init_args.version", str(version)]
    cli = make_cli(args, run=False)
    records = [cb for cb in cli.trainer.callbacks if isinstance(cb, RunRecord)]
    if not records:
        raise UserError("the sweep needs the RunRecord callback (imdb_lightning.callbacks.RunRecord) in trainer.callbacks")
    records[0].extra = extra
    cli.before_fit()  # fit's own checks (precision, monitors, data), which a run=False CLI skips
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=str(ckpt) if ckpt else None)
    try:
        cli.datamodule.dataset("test")
    except DataError as err:
        print(f"  not tested: {err}", file=sys.stderr)
        return
    cli.trainer.test(cli.model, cli.datamodule, ckpt_path="best")


def sweep(encoders: list[str], seeds: list[int], configs: list[str], overrides: list[str], logdir: str,
          split_seeds: list[int] | None = None) -> list[dict]:
    unknown = set(encoders) - set(ENCODERS)
    if unknown:
        raise UserError(f"unknown encoder(s) {', '.join(sorted(unknown))}; choose from {', '.join(ENCODERS)}")
    # "{encoder}" in a config path names one file per encoder: --config 'experiments/tuned/{encoder}.yaml'
    per_encoder = {e: [c.replace("{encoder}", e) for c in configs] for e in encoders}
    for config in sorted({c for files in per_encoder.values() for c in files}):
        if not Path(config).is_file():
            raise UserError(f"{config}: no such config file")
    flags = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: write KEY=VALUE, e.g. trainer.max_epochs=5")
        flags += [f"--{key}", value]
    if split_seeds and any(item.partition("=")[0] == "data.split_seed" for item in overrides):
        raise UserError("--split_seeds and --set data.split_seed=... both name the split; give one of them")
    done = []
    for encoder, split_seed, seed in product(encoders, split_seeds or [None], seeds):
        key = sweep_key(encoder, seed, per_encoder[encoder], overrides, split_seed)
        folder, record = existing_run(Path(logdir), encoder, key)
        label = f"{encoder} seed {seed}" + ("" if split_seed is None else f" split seed {split_seed}")
        info = {"encoder": encoder, "seed": seed, **({} if split_seed is None else {"split_seed": split_seed})}
        if record.get("status") == "finished":
            print(f"[sweep] {label}: finished in {folder}, skipped", file=sys.stderr)
            done.append({**info, "folder": str(folder), "skipped": True})
            continue
        version = run_version(folder) if folder else None
        ckpt = last_checkpoint(folder) if folder else None
        print(f"[sweep] {label}: " + (f"resuming {ckpt}" if ckpt else "starting"), file=sys.stderr)
        cls, preset_args = ENCODERS[encoder]
        preset = [f"--model.encoder.init_args.{k}={str(v).lower()}" for k, v in preset_args.items()]
        args = [
            *[a for c in per_encoder[encoder] for a in ("--config", c)],
            "--model.encoder", class_path(cls), *preset,
            "--seed_everything", str(seed),
            "--trainer.logger.init_args.save_dir", logdir, "--trainer.logger.init_args.name", encoder, *flags,
            *([] if split_seed is None else ["--data.split_seed", str(split_seed)]),
        ]
        run_one(args, {"sweep_key": key, **info}, version, ckpt)
        done.append({**info, "skipped": False})
    return done


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
    opts = parser.parse_args(argv)
    for option, seeds in (("--seeds", opts.seeds), ("--split_seeds", opts.split_seeds or [])):
        for seed in seeds:
            check_seed(option, seed)
    sweep(opts.encoders, opts.seeds, opts.config, opts.set, opts.logdir, opts.split_seeds)
    pool = " --over_splits" if opts.split_seeds else ""
    print(f"[sweep] done; compare with: imdb-lightning compare {opts.logdir}{pool}", file=sys.stderr)
