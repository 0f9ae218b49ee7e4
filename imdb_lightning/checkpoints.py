"""Reading this project's checkpoints: plain data only (`weights_only=True`), with one-line errors."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import UserError

# What a checkpoint holds: a language model says so in its hyperparameters (`task`), a classifier
# carries its tokenizer in the data module's state, a forecaster has neither.
KINDS = {
    "sentiment": "a sentiment classifier (imdb-lightning fit / test / predict)",
    "forecast": "a forecaster (imdb-lightning forecast fit / test)",
    "language_model": "a language model (imdb-lightning pretrain; fine-tune it with fit --model.pretrained)",
}


def read_checkpoint(path: str | Path) -> dict:
    """torch.load with weights_only=True, and a clear error for anything that is not our checkpoint."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise UserError(f"{path}: is a directory, not a checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, foreign pickle, random bytes: all mean the same to a user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if len(reason) > 200:  # torch's long hints: the first sentence says what is wrong
            first = reason.split(". ")[0]
            reason = first if len(first) <= 200 else first[:200].rsplit(" ", 1)[0] + " …"
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__}{': ' + reason if reason else ''})") from err
    if not isinstance(ckpt, dict) or "encoder" not in ckpt.get("hyper_parameters", {}) or "state_dict" not in ckpt:
        raise UserError(f"{path}: not an imdb-lightning checkpoint (no encoder hyperparameters or weights)")
    return ckpt


def checkpoint_kind(ckpt: dict) -> str:
    if ckpt.get("hyper_parameters", {}).get("task") == "language_model":
        return "language_model"
    if any(isinstance(v, dict) and "tokenizer" in v for v in ckpt.values()):
        return "sentiment"
    return "forecast"


def data_state(ckpt: dict) -> dict:
    """The data module's part of a checkpoint: the tokenizer (JSON), max_length, truncation, and (since
    checkpoints record it) `data`, what its data were: settings, training and validation digests."""
    return next(v for v in ckpt.values() if isinstance(v, dict) and "tokenizer" in v)


def data_identity(ckpt: dict) -> dict:
    """What a checkpoint's data were (IMDBDataModule.identity): {} for checkpoints from before it was saved."""
    return next((v.get("data") or {} for v in ckpt.values() if isinstance(v, dict) and "tokenizer" in v), {})


def data_settings(ckpt: dict) -> dict:
    """The data settings a checkpoint's run used: the recorded ones (files as absolute paths), else, for
    checkpoints from before, the data module's saved arguments (files as they were typed)."""
    saved = dict(ckpt.get("datamodule_hyper_parameters") or {})
    return {**saved, **data_identity(ckpt).get("settings", {})}


def expect_kind(path: str | Path, ckpt: dict, kind: str, command: str) -> None:
    found = checkpoint_kind(ckpt)
    if found != kind:
        raise UserError(f"{path}: holds {KINDS[found]}, not {KINDS[kind].split(' (')[0]}; {command} needs the latter")
