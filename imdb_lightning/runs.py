"""Run folders (`lightning_logs/<experiment>/version_N`) and files that are written whole or not at all."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional


def run_version(folder: Path) -> Optional[int]:
    """N of a `version_N` folder, else None."""
    prefix, _, number = Path(folder).name.rpartition("_")
    return int(number) if prefix == "version" and number.isdigit() else None


def run_folders(root: Path) -> list[Path]:
    """The `version_N` run folders under an experiment's log folder, oldest (lowest N) first."""
    folders = [p for p in Path(root).glob("version_*") if p.is_dir() and run_version(p) is not None]
    return sorted(folders, key=run_version)


def last_checkpoint(run: Path) -> Optional[Path]:
    """A run's `checkpoints/last.ckpt` (the newest state of its fit); runs from before it was the only
    one may have `last-v1.ckpt` beside it: the newest file wins."""
    lasts = sorted(Path(run).glob("checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    return lasts[-1] if lasts else None


def best_checkpoint(run: Path) -> Optional[Path]:
    best = sorted(Path(run).glob("checkpoints/best*.ckpt"), key=lambda p: p.stat().st_mtime)
    return best[-1] if best else None


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
