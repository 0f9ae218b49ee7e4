"""`imdb-lightning linear`: the linear references as runs beside the recurrent ones.

Trained on exactly the train/validation split a `fit` with the same data settings uses (same
`--config` files and `--data.*` flags), tested when the data has a test split, and written as a
run folder (`config.yaml`, `run.json`, TensorBoard scalars, the model as `linear.npz`) that
`compare` ranks with the rest and `predict --ckpt_path FOLDER` applies.

`--combine RUN [RUN ...]` stacks a linear model with trained recurrent runs instead: fitted on
their own split (the data settings their best checkpoint was trained with), its logit and each
run's best checkpoint's logit are weighed by a logistic regression fitted on the validation reviews,
whose figure is therefore cross-fitted by film. Runs that validated on the same reviews are stacked
together; runs of other splits (another `data.split_seed`, say) make one stack per split. A stack's
run.json names the checkpoints it reads (relative to its folder, with their digests): `predict`
needs them where they were.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from itertools import product
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from ..arguments import ArgumentParser, check_seed, comma_list
from ..checkpoints import data_identity, data_settings, expect_kind, read_checkpoint
from ..data.datamodule import IMDBDataModule
from ..data.tokenizer import check_words
from ..errors import DataError, UserError
from ..machine import check_writable
from ..models.hparams import linear_session
from ..models.linear import DEFAULT_C, LINEAR_FILE, LinearReference, Stack
from ..runs import (
    FORMAT,
    add_evaluation,
    atomic_write,
    best_checkpoint,
    checkpoint_entry,
    digest,
    last_checkpoint,
    now,
    read_record,
    relative_to_run,
    run_configuration,
    run_folders,
    run_version,
    write_record,
    write_val_reviews,
)
from ..standard_error import clustered_standard_error
from ..training import read_config
from .compare import Z95


def figures(logits: np.ndarray, labels: np.ndarray, groups: np.ndarray, stage: str) -> dict:
    from sklearn.metrics import f1_score, roc_auc_score

    predicted = (logits >= 0).astype(int)
    correct = (predicted == labels).astype(float)
    return {f"{stage}/acc": float(correct.mean()), f"{stage}/f1": float(f1_score(labels, predicted)),
            f"{stage}/auroc": float(roc_auc_score(labels, logits)),
            f"{stage}/acc_se": clustered_standard_error(correct, groups)}


def film_numbers(reviews) -> np.ndarray:
    groups = reviews.groups if reviews.groups is not None else np.arange(len(reviews)).astype(str)
    return np.unique(groups.astype(str), return_inverse=True)[1]


def new_run_folder(root: Path) -> Path:
    versions = [run_version(p) for p in run_folders(root)]
    folder = root / f"version_{max(versions, default=-1) + 1}"
    folder.mkdir(parents=True)
    return folder


def model_label(kind: str, ngrams: int) -> str:
    # word pairs are the references' default; other n-gram ranges are other recipes, named apart in compare
    return kind if ngrams == 2 else f"{kind}_{ngrams}gram"


def run(kind: str, C: float, data: dict, logdir: str, name: str, partners: Optional[list[dict]] = None,
        ngrams: int = 2) -> dict:
    """Fit one linear reference on the data module's training split (with `partners`, recurrent
    runs' checkpoints to stack with it); validate, test when possible; record."""
    start = time.monotonic()
    dm = IMDBDataModule(**data)
    train, val = dm.reviews("train"), dm.reviews("val")
    check_words(train.texts)
    model = LinearReference(kind, C, ngrams).fit(train.texts, train.labels)
    fit_s = time.monotonic() - start
    record = {"format": FORMAT, "kind": "linear", "status": "finished", "model": model_label(kind, ngrams), "C": model.C,
              "parameters": model.parameters, "validation": dm.validation, "data": dm.identity(),
              "train_samples": len(train), "seed": None}
    if partners:
        model, val_logits = stack(model, partners, dm)
        seeds = sorted({str(p["seed"]) for p in partners})  # runs of one seed stack as that seed
        record.update(model=name, seed=partners[0]["seed"] if len(seeds) == 1 else "+".join(seeds), weights=model.weights,
                      parameters=record["parameters"] + sum(p["parameters"] for p in partners))
    else:
        val_logits = model.logits(val.texts)
    record["val"] = figures(val_logits, val.labels, film_numbers(val), "val")
    record["best_val_acc"], record["val_acc_se"] = record["val"]["val/acc"], record["val"]["val/acc_se"]
    tested = evaluate_test(model, dm)
    record.update(wall_s=time.monotonic() - start, train_s=fit_s)
    if partners:  # what the stack cost in all: its own fit and its recurrent runs' (unknown if one lacks a wall time)
        walls = [p.get("wall_s") for p in partners]
        record["total_wall_s"] = record["wall_s"] + sum(walls) if None not in walls else None
    # what the folder records beside the figures (untimed: the test reviews' digest takes a while)
    val_predictions = (np.arange(len(val)), film_numbers(val), val.labels, 1 / (1 + np.exp(-val_logits)),
                       digest(dm.split_key()))  # (review, film, label, P(positive), split) as write_val_reviews takes them
    tested = {"data": dm.identity("test"), **tested} if tested else None
    record["folder"] = str(write_run(Path(logdir) / name, record, model, data, partners, val_predictions, tested))
    return record


def stack(linear: LinearReference, partners: list[dict], dm: IMDBDataModule) -> tuple[Stack, np.ndarray]:
    """`linear` and the partners' checkpoints, weighed by a logistic regression on the validation reviews: the
    stack and its validation logits (cross-fitted by film)."""
    for partner in partners:  # the stacker is fitted on validation: it must be the reviews each run validated on
        if partner["val_digest"] and partner["val_digest"] != dm.digest("val"):
            raise UserError(f"--combine: {partner['checkpoint']} validated on other reviews than its run's data settings "
                            "carve now (its training files changed since?); fit it again, or leave it out")
    model, val = Stack(linear, [p["predictor"] for p in partners]), dm.reviews("val")
    return model, model.fit(val.texts, val.labels, film_numbers(val))


def evaluate_test(model, dm: IMDBDataModule) -> Optional[dict]:
    """The test reviews' figures, as run.json's evaluation holds them (less its time, checkpoint and data); None
    when the data have no test split."""
    try:
        test = dm.reviews("test")
        tested = figures(model.logits(test.texts), test.labels, film_numbers(test), "test")
    except DataError as err:
        print(f"  not tested: {err}", file=sys.stderr)
        return None
    return {"reviews_seen": len(test), "settings_from": "checkpoint", "figures": tested}


def write_run(root: Path, record: dict, model, data: dict, partners: Optional[list[dict]], val_predictions: tuple,
              tested: Optional[dict]) -> Path:
    """A new run folder under `root`: the model, config.yaml, run.json, the validation reviews' predictions and
    TensorBoard's scalars and HParams row."""
    folder = new_run_folder(root)
    linear = model.linear if partners else model
    # the stacker's weights are fitted, not set: they stay in run.json, so `compare` groups seeds
    config = {"data": data, "model": {"kind": linear.kind, "C": linear.C, "ngrams": linear.ngrams,
                                      **({"combined_with": "+".join(p["name"] for p in partners)} if partners else {})}}
    try:
        linear.save(folder / LINEAR_FILE)  # `predict --ckpt_path FOLDER` applies it (a stack with its runs' checkpoints)
        # what the figures came from: this model (with, for a stack, its runs' checkpoints, by path and digest) and the data
        record["best_checkpoint"] = checkpoint_entry(folder, folder / LINEAR_FILE, monitor="val/acc",
                                                     score=record["best_val_acc"])
        if partners:
            record["partners"] = [{"run": relative_to_run(folder, p["run"]),
                                   "checkpoint": checkpoint_entry(folder, p["checkpoint"])} for p in partners]
            record["checkpoints"] = [p["checkpoint"]["path"] for p in record["partners"]]
        if tested is not None:
            add_evaluation(record, {"stage": "test", "time": now(), "checkpoint": record["best_checkpoint"], **tested})
        atomic_write(folder / "config.yaml", lambda tmp: Path(tmp).write_text(yaml.safe_dump(config, sort_keys=False)))
        write_record(folder, record)
        write_val_reviews(folder, *val_predictions, epoch=0)
        write_scalars(folder, record)
        linear_session(folder, record, data)  # its row in TensorBoard's HParams tab, as in compare's table
    except BaseException:  # (Ctrl-C included) a run folder is whole or not there
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def write_scalars(folder: Path, record: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(folder)) as writer:
        for stage in ("val", "test"):
            for key, value in record.get(stage, {}).items():
                writer.add_scalar(key, value, 0)
        writer.add_scalar("hp/val_acc", record["best_val_acc"], 0)


def resolve_device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


SAFE_WITH_COMBINE = ("--data.test_files", "--data.cache_dir", "--data.num_workers")


def command_line_data(configs: list[str], overrides: list[str]) -> dict:
    return {k: v for k, v in vars(read_config(configs, overrides).data).items() if not k.startswith("__")}


def partner_runs(folders: list[str], scratch: Path, overrides: list[str], device: str = "cpu") -> list[tuple[list[dict], dict]]:
    """Recurrent fits' best checkpoints, loaded, grouped by the split they trained on: for each
    split (in the order first given), its runs and its data settings (the ones the checkpoint was trained with)."""
    from ..serve.predictor import load

    if len({Path(f).resolve() for f in folders}) < len(folders):
        raise UserError(f"--combine: a run is given twice ({' '.join(folders)})")
    groups: dict[str, tuple[list[dict], dict]] = {}
    for i, folder in enumerate(folders):
        run_dir = Path(folder)
        configuration = run_configuration(run_dir) if run_dir.is_dir() else None
        ckpt = best_checkpoint(run_dir) or last_checkpoint(run_dir)
        if configuration is None or ckpt is None:
            raise UserError(f"--combine {folder}: not a fit's run folder (it needs config.yaml and checkpoints/)")
        # a language model's or a forecaster's run stacks with nothing: say so before reading its data settings
        saved = read_checkpoint(ckpt)
        expect_kind(ckpt, saved, "sentiment", "imdb-lightning linear --combine")
        record = read_record(run_dir)
        data_only = scratch / f"data{i}.yaml"  # (the configuration also holds fit-only keys: ckpt_path, ...)
        recorded = {k: v for k, v in data_settings(saved).items() if k in (configuration.get("data") or {})}
        data_only.write_text(yaml.safe_dump({"data": {**(configuration.get("data") or {}), **recorded}}))
        settings = command_line_data([str(data_only)], overrides)
        # the stacker is fitted on validation: only runs that never trained on those reviews stack together
        key = json.dumps(IMDBDataModule(**settings).split_key(), default=str)
        partners, _ = groups.setdefault(key, ([], settings))
        predictor = load(ckpt, device=device)
        partners.append({"predictor": predictor, "checkpoint": ckpt, "run": run_dir, "seed": record.get("seed"),
                         "val_digest": data_identity(saved).get("val_digest"),
                         "parameters": sum(p.numel() for p in predictor.model.parameters()),
                         "wall_s": record.get("wall_s"),  # a stack costs its partners' training too
                         # the experiment: runs of one recipe with other seeds group together in compare
                         "name": run_dir.parent.name})
    return list(groups.values())


def parse(argv: list[str]):
    """The options, and the --data.KEY VALUE arguments left for the data module, each checked."""
    parser = ArgumentParser(
        prog="imdb-lightning linear", description=__doc__.splitlines()[0],
        epilog="Any --data.KEY VALUE of `fit` is accepted too (e.g. --data.train_files reviews.parquet).",
    )
    parser.add_argument("--config", action="append", default=[],
                        help="experiment YAML(s) whose data settings to use (repeatable, as for fit)")
    parser.add_argument("--models", type=comma_list(), default=None,
                        help=f"from {','.join(DEFAULT_C)} (default: both; nbsvm with --combine)")
    parser.add_argument("--C", type=float, default=0.0, help=f"inverse regularisation (default per model: {DEFAULT_C})")
    parser.add_argument("--ngrams", type=int, default=2,
                        help="word n-grams up to this length (default 2: uni+bigrams, as Wang & Manning; 3 adds trigrams)")
    parser.add_argument("--combine", metavar="RUN", nargs="+",
                        help="recurrent fits' run folders (lightning_logs/NAME/version_N): stack their best checkpoints' "
                        "logits with the linear model's on their split (runs of one split together, one stack per split)")
    parser.add_argument("--device", default="auto",
                        help="where --combine's runs predict: cpu, cuda, cuda:1, ... (default auto: the GPU when there is one; "
                        "a large encoder's predictions on a CPU can take longer than the linear model)")
    parser.add_argument("--split_seeds", type=comma_list(int), default=None,
                        help="comma-separated data.split_seed values: one reference per validation split "
                        "(pool them with compare --over_splits; --combine takes the splits from its runs)")
    parser.add_argument("--logdir", default="lightning_logs",
                        help="runs land in LOGDIR/linear_<model>/version_N (with --combine: LOGDIR/<model>+<experiment>[+...]/)")
    opts, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("--") and not a.startswith("--data.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    check_writable(opts.logdir, "--logdir")
    models = opts.models or (["nbsvm"] if opts.combine else ["nbsvm", "tfidf"])
    bad = set(models) - set(DEFAULT_C)
    if bad:
        parser.error(f"--models: unknown {', '.join(sorted(bad))}; choose from {', '.join(DEFAULT_C)}")
    if not 0 <= opts.C < float("inf"):  # (NaN too)
        parser.error(f"--C must be positive (or 0 for the default), got {opts.C}")
    if not 1 <= opts.ngrams <= 5:
        parser.error(f"--ngrams must be 1 to 5, got {opts.ngrams}")
    if opts.device != "auto" and not opts.combine:
        parser.error("--device sets where --combine's runs predict; the linear models themselves run on the CPU")
    if opts.combine and opts.config:
        parser.error("--combine reads the run's own config.yaml (its split); leave out --config")
    changed = [a.split("=")[0] for a in rest if a.startswith("--data.") and a.split("=")[0] not in SAFE_WITH_COMBINE]
    if opts.combine and changed:  # another split would validate on reviews the checkpoint was trained on
        parser.error(f"--combine keeps the run's own data settings; {changed[0]} would change them "
                     f"(allowed: {', '.join(SAFE_WITH_COMBINE)})")
    for seed in opts.split_seeds or []:
        check_seed("--split_seeds", seed)
    if opts.split_seeds and (opts.combine or any(a.split("=")[0] == "--data.split_seed" for a in rest)):
        parser.error("--split_seeds names the splits itself; leave out " +
                     ("--combine (its runs name theirs)" if opts.combine else "--data.split_seed"))
    return opts, rest, models


def main(argv: list[str]) -> list[dict]:
    opts, rest, models = parse(argv)
    if opts.combine:
        with tempfile.TemporaryDirectory() as scratch:
            groups = partner_runs(opts.combine, Path(scratch), rest, resolve_device(opts.device))
    else:
        data = command_line_data(opts.config, rest)
        groups = [(None, {**data, "split_seed": s}) for s in opts.split_seeds] if opts.split_seeds else [(None, data)]
    results = []
    for (partners, data), kind in product(groups, models):
        label = model_label(kind, opts.ngrams)
        name = "+".join([label, *(p["name"] for p in partners)]) if partners else f"linear_{label}"
        record = run(kind, opts.C, data, opts.logdir, name, partners, opts.ngrams)
        val, test = record["val"], record.get("test", {})
        split = f"{(record['validation'] or {}).get('kind', '?')} split, split seed {data.get('split_seed')}"
        line = (f"[linear] {record['model']}: val acc ({split}) {val['val/acc']:.4f} ± {Z95 * val['val/acc_se']:.4f}"
                + (f", test acc {test['test/acc']:.4f}" if test else "") + f"; {record['wall_s']:.0f} s; {record['folder']}")
        print(line)
        results.append(record)
    return results
