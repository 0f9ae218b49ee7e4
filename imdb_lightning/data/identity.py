"""What a data module's data are: the settings that define what its figures mean, the digests of its
reviews, and the checks a resume makes against what its checkpoint recorded (docs/runs.md)."""

from __future__ import annotations

import hashlib
import os
from typing import Literal, Optional

import numpy as np

from ..errors import ConfigError
from .sources import Reviews

# The settings that define what a checkpoint's figures mean: which reviews it trained on, how validation
# was carved from them, and how a review becomes tokens. A resume may not change them; `validate` and
# `test` take them from the checkpoint. (Where the files are is not among them: their digest is.)
LOCATION = ("source", "train_files", "aclimdb_dir", "hub_name")
SOURCE = ("group_column", "synthetic_size", "synthetic_median_words")
SPLIT = ("val_split", "val_fraction", "split_seed")
PREPROCESSING = ("vocab_size", "min_frequency", "lowercase", "max_length", "truncation")
MEANING = (*LOCATION, *SOURCE, *SPLIT, *PREPROCESSING)


def reviews_digest(reviews: Reviews) -> str:
    """sha256 of reviews as read: texts, labels and films, in order."""
    sha = hashlib.sha256()
    for text in reviews.texts:
        raw = text.encode("utf-8", "surrogatepass")
        sha.update(len(raw).to_bytes(8, "little") + raw)
    sha.update(np.ascontiguousarray(reviews.labels, dtype=np.int8).tobytes())
    if reviews.groups is not None:
        sha.update("\0".join(map(str, reviews.groups)).encode("utf-8", "surrogatepass"))
    return f"sha256:{sha.hexdigest()}"


def file_list(value) -> list[str]:
    """A files setting (one path, or a list of them) as a list."""
    return [value] if isinstance(value, str) else list(value or [])


def same_setting(old, new) -> bool:
    """Two values of a data setting, one file and a one-file list read alike."""
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else [v] if isinstance(v, str) and v else v  # noqa: E731
    return norm(old) == norm(new)


def changed_meaning(saved: dict, settings: dict, keys: tuple = MEANING) -> Optional[tuple[str, object, object]]:
    """(key, saved value, this value) of the first setting among `keys` that differs, else None; settings
    `saved` does not hold (checkpoints from before them) are not compared."""
    for key in keys:
        if key in saved and key in settings and not same_setting(saved[key], settings[key]):
            return key, saved[key], settings[key]
    return None


def refuse_change(ckpt_path, key: str, old, new) -> ConfigError:
    return ConfigError(f"--ckpt_path {ckpt_path}: its run used data.{key}={old}, this one {new}; a resumed fit goes on with "
                       "its checkpoint's data (its reviews, split and preprocessing define what its figures mean): resume "
                       "with its settings, or start a new run without --ckpt_path")


def _where(dm, split: str) -> dict:
    hp = dm.hparams
    files = file_list(hp.test_files if split == "test" else hp.train_files)
    return {"source": dm.source_name,
            "files": [os.path.abspath(f) for f in files] if dm.source_name == "files" else None,
            "aclimdb_dir": os.path.abspath(hp.aclimdb_dir) if dm.source_name == "aclimdb" else None,
            "hub_name": hp.hub_name if dm.source_name == "hub" else None,
            "synthetic": {"size": hp.synthetic_size, "median_words": hp.synthetic_median_words, "seed": hp.split_seed}
            if dm.source_name == "synthetic" else None}

def settings(dm) -> dict:
    """The settings that define what a data module's figures mean (MEANING), files as absolute paths."""
    settings = {key: dm.hparams[key] for key in MEANING}
    settings["train_files"] = [os.path.abspath(f) for f in file_list(dm.hparams.train_files)] or None
    settings["aclimdb_dir"] = os.path.abspath(dm.hparams.aclimdb_dir) if dm.hparams.aclimdb_dir else None
    settings["source"] = dm.source_name
    return settings

def identity(dm, split: Literal["fit", "val", "test"] = "fit") -> dict:
    """What the data are, for a record: for a fit its settings, training reviews and validation reviews;
    for an evaluation the split it read (source, files, digest, reviews) and the preprocessing."""
    if split == "test":
        test = dm.reviews("test")
        preprocessing = {key: dm.hparams[key] for key in PREPROCESSING}
        return {"split": "test", **_where(dm, "test"), "digest": dm.digest("test"), "reviews": len(test),
                "preprocessing": preprocessing}
    train = {**_where(dm, "train"), "digest": dm.digest("train"),
             "reviews": len(dm.reviews("train")) + len(dm.reviews("val"))}
    fit = {"settings": settings(dm), "train": train, "val_digest": dm.digest("val"), "validation": dm.validation}
    if split == "val":
        return {"split": "val", "digest": fit["val_digest"], "reviews": len(dm.reviews("val")), **fit}
    return fit

def check_resume(dm, saved: Optional[dict], ckpt_path) -> None:
    """A resumed fit must go on with the data its checkpoint was trained on: the same settings (MEANING)
    and the same training reviews, wherever the files are now. Checkpoints from before they held
    their data's identity are checked by the command line, on their saved settings."""
    if not saved:
        return
    change = changed_meaning(saved.get("settings", {}), settings(dm), keys=(*SOURCE, *SPLIT, *PREPROCESSING))
    if change:
        raise refuse_change(ckpt_path, *change)
    for part, mine, theirs in (("training", dm.digest("train"), saved.get("train", {}).get("digest")),
                               ("validation", dm.digest("val"), saved.get("val_digest"))):
        if theirs and mine != theirs:
            where = next(f"data.{key}" for key in ("train_files", "aclimdb_dir", "hub_name", "source")
                         if settings(dm).get(key))
            raise ConfigError(f"--ckpt_path {ckpt_path}: its run trained on other {part} reviews than {where} "
                              f"holds now ({theirs[:19]}..., now {mine[:19]}...); resume with the data it was trained "
                              "on, or start a new run without --ckpt_path")
