"""`imdb-lightning linear`: the linear references as runs beside the recurrent ones.

Trained on exactly the train/validation split a `fit` with the same data settings uses (same
`--config` files and `--data.*` flags), tested when the data has a test split, and written as a
run folder (`config.yaml`, `run.json`, TensorBoard scalars) that `compare` ranks with the rest.

`--combine RUN` pairs a linear model with a trained recurrent run instead: fitted on that run's
own split (its `config.yaml`), its logit and the run's best checkpoint's logit are weighed by a
logistic regression fitted on the validation reviews, whose figure is therefore cross-fitted by film.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from ..data.datamodule import IMDBDataModule
from ..data.split import clustered_standard_error
from ..errors import DataError, UserError
from ..helpers import ArgumentParser, comma_list
from ..models.linear import DEFAULT_C, LinearReference
from ..runs import atomic_write, best_checkpoint, last_checkpoint, run_folders, run_version
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


class Combined:
    """A linear reference and a recurrent classifier voting together: a logistic regression on their
    two logits (stacking). Its three numbers are fitted on the validation reviews, so the validation
    figure comes from cross-fitting: each review scored by a stacker fitted without its film."""

    def __init__(self, linear: LinearReference, predictor, weights: Optional[list[float]] = None):
        self.linear, self.predictor, self.weights = linear, predictor, weights  # [linear, recurrent, bias]

    def features(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.linear.logits(texts), self.predictor.logits(texts)], axis=1)  # (texts, 2)

    def fit(self, texts: list[str], labels: np.ndarray, films: np.ndarray, folds: int = 5) -> np.ndarray:
        """Fit the weights on these (validation) reviews; return their cross-fitted logits (texts,)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GroupKFold

        x = self.features(texts)
        out = np.empty(len(texts))
        for fit_rows, held in GroupKFold(min(folds, len(np.unique(films)))).split(x, labels, films):
            out[held] = LogisticRegression().fit(x[fit_rows], labels[fit_rows]).decision_function(x[held])
        stacker = LogisticRegression().fit(x, labels)
        self.weights = [*map(float, stacker.coef_[0]), float(stacker.intercept_[0])]
        return out

    def logits(self, texts: list[str]) -> np.ndarray:
        return self.features(texts) @ np.array(self.weights[:2]) + self.weights[2]


def run(kind: str, C: float, data: dict, logdir: str, name: str, partner: Optional[dict] = None) -> dict:
    """Fit one linear reference on the data module's training split (with `partner`, a recurrent
    run's checkpoint to add to it); validate, test when possible; record."""
    from torch.utils.tensorboard import SummaryWriter

    start = time.monotonic()
    dm = IMDBDataModule(**data)
    train, val = dm.reviews("train"), dm.reviews("val")
    model = LinearReference(kind, C).fit(train.texts, train.labels)
    fit_s = time.monotonic() - start
    record = {"kind": "linear", "status": "finished", "model": kind, "C": model.C, "parameters": model.parameters,
              "validation": dm.validation, "train_samples": len(train), "seed": None}
    if partner:
        model = Combined(model, partner["predictor"])
        val_logits = model.fit(val.texts, val.labels, film_numbers(val))
        record.update(model=f"{kind}+{partner['name']}", seed=partner["seed"], checkpoint=partner["checkpoint"],
                      parameters=record["parameters"] + partner["parameters"], weights=model.weights)
    else:
        val_logits = model.logits(val.texts)
    record["val"] = figures(val_logits, val.labels, film_numbers(val), "val")
    record["best_val_acc"], record["val_acc_se"] = record["val"]["val/acc"], record["val"]["val/acc_se"]
    try:
        test = dm.reviews("test")
        record["test"] = figures(model.logits(test.texts), test.labels, film_numbers(test), "test")
    except DataError as err:
        print(f"  not tested: {err}", file=sys.stderr)
    record.update(wall_s=time.monotonic() - start, train_s=fit_s, train_samples_per_s=len(train) / fit_s, epochs=1)

    folder = new_run_folder(Path(logdir) / name)
    linear = model.linear if partner else model
    config = {"data": data, "model": {"kind": kind, "C": linear.C, "ngrams": linear.ngrams,
                                      **({"combined_with": partner["name"], "weights": model.weights} if partner else {})}}
    atomic_write(folder / "config.yaml", lambda tmp: Path(tmp).write_text(yaml.safe_dump(config, sort_keys=False)))
    atomic_write(folder / "run.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    with SummaryWriter(log_dir=str(folder)) as writer:
        for stage in ("val", "test"):
            for key, value in record.get(stage, {}).items():
                writer.add_scalar(key, value, 0)
        writer.add_scalar("hp/val_acc", record["best_val_acc"], 0)
    record["folder"] = str(folder)
    return record


SAFE_WITH_COMBINE = ("--data.test_files", "--data.cache_dir", "--data.num_workers")


def partner_run(folder: str, scratch: Path) -> tuple[dict, list[str]]:
    """A recurrent fit's best checkpoint, loaded, and its data settings (the split it trained on)."""
    from ..serve.predictor import load

    run_dir = Path(folder)
    config = run_dir / "config.yaml"
    ckpt = best_checkpoint(run_dir) or last_checkpoint(run_dir)
    if not config.is_file() or ckpt is None:
        raise UserError(f"--combine {folder}: not a fit's run folder (it needs config.yaml and checkpoints/)")
    record_file = run_dir / "run.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    predictor = load(ckpt)
    name = run_dir.parent.name  # the experiment: runs of one recipe with other seeds group together in compare
    data_only = scratch / "data.yaml"  # the saved config also holds fit-only keys (ckpt_path, ...)
    data_only.write_text(yaml.safe_dump({"data": yaml.safe_load(config.read_text()).get("data") or {}}))
    return {"predictor": predictor, "name": name, "seed": record.get("seed"), "checkpoint": str(ckpt),
            "parameters": sum(p.numel() for p in predictor.model.parameters())}, [str(data_only)]


def main(argv: list[str]) -> list[dict]:
    parser = ArgumentParser(
        prog="imdb-lightning linear", description=__doc__.splitlines()[0],
        epilog="Any --data.KEY VALUE of `fit` is accepted too (e.g. --data.train_files reviews.parquet).",
    )
    parser.add_argument("--config", action="append", default=[],
                        help="experiment YAML(s) whose data settings to use (repeatable, as for fit)")
    parser.add_argument("--models", type=comma_list(), default=None,
                        help=f"from {','.join(DEFAULT_C)} (default: both; nbsvm with --combine)")
    parser.add_argument("--C", type=float, default=0.0, help=f"inverse regularisation (default per model: {DEFAULT_C})")
    parser.add_argument("--combine", metavar="RUN", help="a recurrent fit's run folder (lightning_logs/NAME/version_N): "
                        "add its best checkpoint's logit to the linear model's, on that run's own split")
    parser.add_argument("--logdir", default="lightning_logs",
                        help="runs land in LOGDIR/linear_<model>/version_N (with --combine: LOGDIR/<model>+<experiment>/)")
    opts, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("--") and not a.startswith("--data.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    models = opts.models or (["nbsvm"] if opts.combine else ["nbsvm", "tfidf"])
    bad = set(models) - set(DEFAULT_C)
    if bad:
        parser.error(f"--models: unknown {', '.join(sorted(bad))}; choose from {', '.join(DEFAULT_C)}")
    if opts.C < 0:
        parser.error(f"--C must be positive (or 0 for the default), got {opts.C}")
    if opts.combine and opts.config:
        parser.error("--combine reads the run's own config.yaml (its split); leave out --config")
    changed = [a.split("=")[0] for a in rest if a.startswith("--data.") and a.split("=")[0] not in SAFE_WITH_COMBINE]
    if opts.combine and changed:  # another split would validate on reviews the checkpoint was trained on
        parser.error(f"--combine keeps the run's own data settings; {changed[0]} would change them "
                     f"(allowed: {', '.join(SAFE_WITH_COMBINE)})")
    with tempfile.TemporaryDirectory() as scratch:
        partner, configs = partner_run(opts.combine, Path(scratch)) if opts.combine else (None, opts.config)
        data = read_config(configs, rest).data
    data = {k: v for k, v in vars(data).items() if not k.startswith("__")}
    results = []
    for kind in models:
        name = f"{kind}+{partner['name']}" if partner else f"linear_{kind}"
        record = run(kind, opts.C, data, opts.logdir, name, partner)
        val, test = record["val"], record.get("test", {})
        split = (record["validation"] or {}).get("kind", "?")
        line = (f"[linear] {record['model']}: val acc ({split} split) {val['val/acc']:.4f} ± {Z95 * val['val/acc_se']:.4f}"
                + (f", test acc {test['test/acc']:.4f}" if test else "") + f"; {record['wall_s']:.0f} s; {record['folder']}")
        print(line)
        results.append(record)
    return results
