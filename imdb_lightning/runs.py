"""Run folders (`lightning_logs/<experiment>/version_N`) and files that are written whole or not at all."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from .errors import UserError


def run_version(folder: Path) -> Optional[int]:
    """N of a `version_N` folder, else None."""
    prefix, _, number = Path(folder).name.rpartition("_")
    return int(number) if prefix == "version" and number.isdigit() else None


def run_folders(root: Path) -> list[Path]:
    """The `version_N` run folders under an experiment's log folder, oldest (lowest N) first."""
    folders = [p for p in Path(root).glob("version_*") if p.is_dir() and run_version(p) is not None]
    return sorted(folders, key=run_version)


def claim_version(root: Path) -> int:
    """The next free N under an experiment's folder, made as an empty `version_N` (mkdir is atomic:
    two processes never get the same one)."""
    root.mkdir(parents=True, exist_ok=True)
    number = max((run_version(p) for p in run_folders(root)), default=-1) + 1
    while True:
        try:
            (root / f"version_{number}").mkdir()
            return number
        except FileExistsError:
            number += 1


def last_checkpoint(run: Path) -> Optional[Path]:
    """A run's `checkpoints/last.ckpt` (the newest state of its fit); runs from before it was the only
    one may have `last-v1.ckpt` beside it: the newest file wins."""
    lasts = sorted(Path(run).glob("checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    return lasts[-1] if lasts else None


def best_checkpoint(run: Path) -> Optional[Path]:
    best = sorted(Path(run).glob("checkpoints/best*.ckpt"), key=lambda p: p.stat().st_mtime)
    return best[-1] if best else None


RECORD = "run.json"  # each run folder's record: kind, status, times, validation kind, figures (callbacks.RunRecord)


def read_record(folder: Path | str) -> dict:
    """A run folder's run.json as a dict ({} when it has none); one that is not a mapping is an error."""
    path = Path(folder) / RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not readable JSON ({err})") from err
    if not isinstance(record, dict):
        raise UserError(f"{path}: holds a {type(record).__name__}, not a run record")
    return record


def write_record(folder: Path | str, record: dict) -> None:
    atomic_write(Path(folder) / RECORD, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))


def experiment_root(save_dir: Optional[str], name: Optional[str], root_dir: Optional[str] = None) -> Optional[Path]:
    """The folder of an experiment's runs: the logger's save_dir/name, under `trainer.default_root_dir`
    when save_dir is relative (where the runs of `fit --trainer.default_root_dir DIR` land)."""
    if not save_dir:
        return None
    if root_dir and not Path(save_dir).is_absolute():
        save_dir = str(Path(root_dir) / save_dir)
    return Path(save_dir) / (name or "default")


def newest_checkpoint(root: Path, which: str) -> Optional[tuple[Path, Path]]:
    """(run, checkpoint) of the newest run under an experiment's folder that has one: `best`, `last`,
    or `best_or_last` (the best checkpoint of that run, else its last.ckpt)."""
    find = {"best": best_checkpoint, "last": last_checkpoint,
            "best_or_last": lambda run: best_checkpoint(run) or last_checkpoint(run)}[which]
    found = [(run, ckpt) for run in run_folders(root) if (ckpt := find(run))]
    return found[-1] if found else None


def atomic_write(path: Path | str, write: Callable[[str], None]) -> None:
    """Call `write(temporary_path)`, then rename the file into place: readers never see half a file,
    and a failed write leaves nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# Each review's validation outcome at the run's best epoch, beside run.json: `compare` pairs two runs that
# validated on the same reviews (same `split`) review by review, with films as clusters (tools/paired.py).
VAL_REVIEWS = "val_reviews.npz"


def write_val_reviews(folder: Path | str, review, film, label, prob, split: str, epoch: int) -> None:
    """review: index within the validation split; film: the film's number within it; prob: P(positive)."""
    import numpy as np

    # a distributed run pads its shards by repeating up to world_size - 1 reviews: each review once
    review, first = np.unique(np.asarray(review, dtype=np.int64), return_index=True)
    arrays = {"review": review.astype(np.int32), "film": np.asarray(film, dtype=np.int32)[first],
              "label": np.asarray(label, dtype=np.int8)[first], "prob": np.asarray(prob, dtype=np.float32)[first],
              "split": np.array(split), "epoch": np.int64(epoch)}

    def write(tmp: str):
        with open(tmp, "wb") as handle:  # a handle: savez would add .npz to a temporary name
            np.savez_compressed(handle, **arrays)
    atomic_write(Path(folder) / VAL_REVIEWS, write)


def read_val_reviews(folder: Path | str) -> Optional[dict]:
    """A run's per-review validation outcomes (arrays review, film, label, prob; split; epoch), or None."""
    import numpy as np

    path = Path(folder) / VAL_REVIEWS
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {key: saved[key] for key in ("review", "film", "label", "prob", "split", "epoch")}
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{path}: not a readable file of validation outcomes ({type(err).__name__}: {err})") from err
    arrays["split"], arrays["epoch"] = str(arrays["split"]), int(arrays["epoch"])
    return arrays
