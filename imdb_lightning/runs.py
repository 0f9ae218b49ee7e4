"""Run folders (`lightning_logs/<experiment>/version_N`), their records, and files written whole or not at all.

A run folder's record, `run.json`, says what the run *was*; every command that reads a run reads it
through the functions here. Its fields (format 2; records from before lack the newer ones):

- `kind` (fit, validate, test, linear), `status` (running, finished, interrupted, crashed, pruned), `error`,
  `seed`, `parameters`, and the training totals `epochs`, `global_step`, `wall_s`, `train_s`,
  `train_samples` (or `train_tokens`) and their rate per second.
- `segments`: one per stretch of training, the first fit and each resume: `started`, `ended`, `status` (a
  segment a kill ended is `killed` once a resume follows: its `end_step` is the step that resume starts from),
  `from_checkpoint` (a checkpoint entry, below, or null), `start_step`, `end_step`, `config` (the resolved
  configuration it ran with) and `changes` ({dotted key: [before, now]} against the segment before).
- `data`: what its figures mean: `settings` (source, split and preprocessing), `train` (the training
  reviews: source, files or folder or hub name, `digest`, `reviews`), `val_digest`, `validation`.
- `best_checkpoint`: the checkpoint entry its `best_val_acc` (or `best`) belongs to, with `monitor` and `score`.
- `evaluations`: one per `test` or `validate` of a checkpoint: `stage`, `time`, `checkpoint` (entry),
  `data` (`split`, source, files, `digest`, `reviews`), `reviews_seen`, `settings_from` (checkpoint or
  command line) and `figures`. `test` holds the newest test's figures again, for a quick look.
- A checkpoint entry is {`path`, `digest`, `epoch`, `step`}: `path` relative to the run folder the
  record is in (never to the working directory), `digest` the sha256 of the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Optional

from .errors import UserError

RECORD = "run.json"  # each run folder's record (callbacks.RunRecord writes a fit's)
CONFIG = "config.yaml"  # the configuration a run started with (a resume keeps it: its own is a segment of run.json)
FORMAT = 2


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
    """A run's best checkpoint: the one its record names, else (older runs) the newest best*.ckpt."""
    try:
        entry = read_record(run).get("best_checkpoint")
    except UserError:  # a damaged record: the files still say which is the best
        entry = None
    named = resolve(run, entry["path"]) if isinstance(entry, dict) and entry.get("path") else None
    if named is not None and named.is_file():
        return named
    best = sorted(Path(run).glob("checkpoints/best*.ckpt"), key=lambda p: p.stat().st_mtime)
    return best[-1] if best else None


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
    atomic_write(Path(folder) / RECORD, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2, default=str)))


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


# --- provenance: what a record names, and how to find it again -------------------------------------------
def now() -> str:
    """The time of an event in a record: UTC, ISO 8601 to the microsecond (text order is time order)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def file_digest(path: Path | str) -> str:
    """sha256 of a file's bytes, as `sha256:<hex>`."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return f"sha256:{sha.hexdigest()}"


def digest(*parts) -> str:
    """A short stable name for JSON-able parts (cache file names, the split a val_reviews.npz comes from)."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def relative_to_run(folder: Path | str, path: Path | str) -> str:
    """`path` as a record stores it: relative to the run folder (so the folder can be read from anywhere)."""
    return Path(os.path.relpath(Path(path).absolute(), Path(folder).absolute())).as_posix()


def resolve(folder: Path | str, recorded: str) -> Path:
    """A path a record holds, as a path here. Records store paths relative to their run folder; records
    from before did so relative to the working directory of the command that wrote them, which was
    usually the folder above `lightning_logs`: those are looked for under each folder above the run."""
    path = Path(recorded)
    if path.is_absolute():
        return path
    here = Path(os.path.normpath(Path(folder).absolute() / path))
    if here.exists() or path.parts[:1] == ("..",):
        return here
    for above in Path(folder).absolute().parents:
        if (above / path).exists():
            return above / path
    return here


def shown(path: Path | str) -> str:
    """A path for a message: relative to the working directory when it is below it."""
    relative = os.path.relpath(Path(path).absolute())
    return str(path) if relative.startswith("..") else relative


def checkpoint_entry(folder: Path | str, path: Path | str, **info) -> dict:
    """How a record names a checkpoint: its path relative to the run folder, its digest, and `info`
    (epoch, step, ...)."""
    return {"path": relative_to_run(folder, path), "digest": file_digest(path), **info}


def flatten(tree: Optional[dict], prefix: str = "") -> dict:
    """A nested configuration as {dotted key: value}; an optimizer or scheduler (class_path + init_args) and
    any list stay one value (as JSON text)."""
    flat = {}
    for key, value in (tree or {}).items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and not ("class_path" in value and path.endswith(("optimizer", "scheduler"))):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
    return flat


# Keys that say where a run was logged or which checkpoint it started from, not how it trained.
NOT_SETTINGS = ("ckpt_path", "config", "data_settings", "trainer.logger.init_args.version")


def config_changes(before: Optional[dict], now_: Optional[dict]) -> dict:
    """{dotted key: [before, now]} for every setting that differs between two resolved configurations."""
    old, new = flatten(before), flatten(now_)
    return {key: [old.get(key), new.get(key)] for key in sorted(old.keys() | new.keys())
            if not key.startswith(NOT_SETTINGS) and old.get(key) != new.get(key)}


def read_config_file(folder: Path | str) -> Optional[dict]:
    import yaml

    path = Path(folder) / CONFIG
    if not path.is_file():
        return None
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not readable YAML ({' '.join(str(err).split())})") from err
    if not isinstance(content, dict):
        raise UserError(f"{path} holds a {type(content).__name__}, not a mapping of settings")
    return content


def run_configuration(folder: Path | str, record: Optional[dict] = None) -> Optional[dict]:
    """The resolved configuration the run's newest segment ran with (config.yaml for runs from before
    segments were recorded, whose resumes rewrote it)."""
    record = read_record(folder) if record is None else record
    configs = [s["config"] for s in record.get("segments", []) if s.get("config")]
    return configs[-1] if configs else read_config_file(folder)


def run_recipe(folder: Path | str, record: Optional[dict] = None) -> Optional[dict]:
    """The configuration that trains the run again with `fit --config` (seed, overrides and encoder included):
    its newest segment's, without what says where it was logged or which checkpoint it resumed from."""
    config = run_configuration(folder, record)
    if config is None:
        return None
    recipe = json.loads(json.dumps(config))  # (a copy)
    for key in ("ckpt_path", "config", "data_settings"):
        recipe.pop(key, None)
    logger = (recipe.get("trainer") or {}).get("logger")
    if isinstance(logger, dict) and isinstance(logger.get("init_args"), dict):
        logger["init_args"].pop("version", None)
    return recipe


def run_settings(folder: Path | str, record: Optional[dict] = None) -> dict:
    """The run's settings as {dotted key: value}; a setting a resume changed reads `before → after`, so
    a run trained under two settings is never taken for a run of either."""
    record = read_record(folder) if record is None else record
    settings = flatten(run_configuration(folder, record))
    for segment in record.get("segments", [])[1:]:
        for key, (before, _) in segment.get("changes", {}).items():
            if key in settings and not key.startswith(NOT_SETTINGS):
                settings[key] = f"{before} → {settings[key]}"
    return settings


def evaluations(folder: Path | str, record: Optional[dict] = None) -> list[dict]:
    """Every evaluation a run folder records, oldest first, each with `checkpoint_file` (the checkpoint's
    path here, or None when the record names none). Records from before evaluations were recorded
    give theirs too: a test run's figures with the checkpoint it named, a fit's `test` figures with no
    checkpoint (they were of its best checkpoint at the time, which the record did not say)."""
    record = read_record(folder) if record is None else record
    found = [dict(e) for e in record.get("evaluations", [])]
    if not found and (record.get("test") or record.get("kind") == "validate" and record.get("val")):
        stage = "test" if record.get("test") else "validate"
        checkpoint = {"path": record["checkpoint"]} if record.get("kind") in ("test", "validate") and record.get(
            "checkpoint") else None
        found = [{"stage": stage, "time": None, "checkpoint": checkpoint, "data": None, "legacy": True,
                  "figures": record["test"] if stage == "test" else record["val"]}]
    for evaluation in found:
        entry = evaluation.get("checkpoint")
        evaluation["checkpoint_file"] = resolve(folder, entry["path"]) if entry and entry.get("path") else None
    return found


def add_evaluation(record: dict, evaluation: dict) -> dict:
    """The record with `evaluation` added (and its figures as the record's `test` or `val`)."""
    record.setdefault("evaluations", []).append(evaluation)
    figures = evaluation.get("figures", {})
    if evaluation.get("stage") == "test":
        record["test"] = figures
    return record


def stack_checkpoints(folder: Path | str, record: Optional[dict] = None) -> list[Path]:
    """The recurrent checkpoints a stack (`linear --combine` run) was fitted with, checked against their
    digests: a moved or replaced file is a one-line error naming it."""
    record = read_record(folder) if record is None else record
    partners = record.get("partners") or [{"checkpoint": {"path": p}} for p in record.get("checkpoints", [])]
    found = []
    for partner in partners:
        entry = partner["checkpoint"]
        path = resolve(folder, entry["path"])
        if not path.is_file():
            raise UserError(f"{folder}: this stack reads {shown(path)}, which is not there (moved or deleted? "
                            "run `linear --combine` again with the run folders where they are now)")
        if entry.get("digest") and file_digest(path) != entry["digest"]:
            raise UserError(f"{folder}: this stack was fitted with another {shown(path)} (its digest differs: the run was "
                            "resumed or trained again since); run `linear --combine` again")
        found.append(path)
    return found
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
