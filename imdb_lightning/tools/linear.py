"""`imdb-lightning linear`: the linear references as runs beside the recurrent ones.

Trained on exactly the train/validation split a `fit` with the same data settings uses (same
`--config` files and `--data.*` flags), tested when the data has a test split, and written as a
run folder (`config.yaml`, `run.json`, TensorBoard scalars) that `compare` ranks with the rest.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from ..data.datamodule import IMDBDataModule
from ..data.split import clustered_standard_error
from ..errors import DataError
from ..helpers import ArgumentParser, comma_list
from ..models.linear import DEFAULT_C, LinearReference
from ..runs import atomic_write, run_folders, run_version
from ..training import read_config
from .compare import Z95


def figures(model: LinearReference, texts: list[str], labels: np.ndarray, groups: np.ndarray, stage: str) -> dict:
    from sklearn.metrics import f1_score, roc_auc_score

    logits = model.logits(texts)
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


def run(kind: str, C: float, data: dict, logdir: str, name: str) -> dict:
    """Fit one linear reference on the data module's training split; validate, test when possible; record."""
    from torch.utils.tensorboard import SummaryWriter

    start = time.monotonic()
    dm = IMDBDataModule(**data)
    train, val = dm.reviews("train"), dm.reviews("val")
    model = LinearReference(kind, C).fit(train.texts, train.labels)
    fit_s = time.monotonic() - start
    record = {"kind": "linear", "status": "finished", "model": kind, "C": model.C, "parameters": model.parameters,
              "validation": dm.validation, "train_samples": len(train), "seed": None}
    record["val"] = figures(model, val.texts, val.labels, film_numbers(val), "val")
    record["best_val_acc"], record["val_acc_se"] = record["val"]["val/acc"], record["val"]["val/acc_se"]
    try:
        test = dm.reviews("test")
        record["test"] = figures(model, test.texts, test.labels, film_numbers(test), "test")
    except DataError as err:
        print(f"  not tested: {err}", file=sys.stderr)
    record.update(wall_s=time.monotonic() - start, train_s=fit_s, train_samples_per_s=len(train) / fit_s, epochs=1)

    folder = new_run_folder(Path(logdir) / name)
    config = {"data": data, "model": {"kind": kind, "C": model.C, "ngrams": model.ngrams}}
    atomic_write(folder / "config.yaml", lambda tmp: Path(tmp).write_text(yaml.safe_dump(config, sort_keys=False)))
    atomic_write(folder / "run.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    with SummaryWriter(log_dir=str(folder)) as writer:
        for stage in ("val", "test"):
            for key, value in record.get(stage, {}).items():
                writer.add_scalar(key, value, 0)
        writer.add_scalar("hp/val_acc", record["best_val_acc"], 0)
    record["folder"] = str(folder)
    return record


def main(argv: list[str]) -> list[dict]:
    parser = ArgumentParser(
        prog="imdb-lightning linear", description=__doc__.splitlines()[0],
        epilog="Any --data.KEY VALUE of `fit` is accepted too (e.g. --data.train_files reviews.parquet).",
    )
    parser.add_argument("--config", action="append", default=[],
                        help="experiment YAML(s) whose data settings to use (repeatable, as for fit)")
    parser.add_argument("--models", type=comma_list(), default=["nbsvm", "tfidf"], help=f"from {','.join(DEFAULT_C)}")
    parser.add_argument("--C", type=float, default=0.0, help=f"inverse regularisation (default per model: {DEFAULT_C})")
    parser.add_argument("--logdir", default="lightning_logs", help="runs land in LOGDIR/linear_<model>/version_N")
    opts, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("--") and not a.startswith("--data.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    bad = set(opts.models) - set(DEFAULT_C)
    if bad:
        parser.error(f"--models: unknown {', '.join(sorted(bad))}; choose from {', '.join(DEFAULT_C)}")
    if opts.C < 0:
        parser.error(f"--C must be positive (or 0 for the default), got {opts.C}")
    data = read_config(opts.config, rest).data
    data = {k: v for k, v in vars(data).items() if not k.startswith("__")}
    results = []
    for kind in opts.models:
        record = run(kind, opts.C, data, opts.logdir, f"linear_{kind}")
        val, test = record["val"], record.get("test", {})
        split = (record["validation"] or {}).get("kind", "?")
        line = (f"[linear] {kind}: val acc ({split} split) {val['val/acc']:.4f} ± {Z95 * val['val/acc_se']:.4f}"
                + (f", test acc {test['test/acc']:.4f}" if test else "") + f"; {record['wall_s']:.0f} s; {record['folder']}")
        print(line)
        results.append(record)
    return results
