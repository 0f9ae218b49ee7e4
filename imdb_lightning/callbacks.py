"""Callbacks: a checkpoint on Ctrl-C, and a record of each run for `imdb-lightning compare`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


def run_folders(root: Path) -> list[Path]:
    """The `version_N` run folders under an experiment's log folder, oldest (lowest N) first."""
    folders = [p for p in Path(root).glob("version_*") if p.name.split("_")[-1].isdigit()]
    return sorted(folders, key=lambda p: int(p.name.split("_")[-1]))


def last_checkpoint(run: Path) -> Path | None:
    """A run's newest last*.ckpt: the epoch-end and the every-N-steps checkpoints each keep one
    (last.ckpt, last-v1.ckpt), and after a kill the newer one has the most work in it."""
    lasts = sorted(Path(run).glob("checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    return lasts[-1] if lasts else None


class CheckpointOnInterrupt(L.Callback):
    """On Ctrl-C (SIGINT) during fit, write `last.ckpt` so `--ckpt_path last` resumes from there.

    Lightning's own writes are atomic (temp file + rename), so an interrupted or killed write
    never leaves a broken checkpoint behind; this one goes through the same path.
    """

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt) or trainer.state.fn != "fit":
            return
        folders = [cb.dirpath for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
        if folders:
            path = Path(folders[0]) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
            trainer.save_checkpoint(path)
            print(f"\nInterrupted at step {trainer.global_step}; saved {path}. Resume with --ckpt_path last", flush=True)


class RunRecord(L.Callback):
    """Keeps `run.json` in the run folder: status, wall time, training speed, test figures.

    `imdb-lightning compare` reads it; a run killed before the end stays "running", and is
    listed as unfinished rather than averaged in.
    """

    def __init__(self):
        self.extra: dict = {}  # set by `imdb-lightning sweep`: the run's sweep key and seed
        self.record: dict = {}
        self._train_s, self._samples, self._tick = 0.0, 0, 0.0

    def _path(self, trainer: L.Trainer) -> Path | None:
        return Path(trainer.log_dir) / "run.json" if trainer.logger and trainer.log_dir else None

    def _write(self, trainer: L.Trainer, **fields) -> None:
        self.record.update(fields)
        path = self._path(trainer)
        if trainer.is_global_zero and path:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({**self.record, **self.extra}, indent=2))
            os.replace(tmp, path)

    def on_fit_start(self, trainer, module) -> None:
        path = self._path(trainer)
        if path and path.is_file():  # a resumed run keeps its totals so far
            self.record = json.loads(path.read_text())
            self._train_s, self._samples = self.record.get("train_s", 0.0), self.record.get("train_samples", 0)
        self._started = time.monotonic() - self.record.get("wall_s", 0.0)
        params = sum(p.numel() for p in module.parameters())
        self._write(trainer, status="running", parameters=params)

    def on_train_epoch_start(self, trainer, module) -> None:
        self._tick = time.monotonic()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()  # time since the previous training batch: loading, step and logging
        self._train_s += now - self._tick
        self._tick = now
        self._samples += len(batch["labels"])

    def on_validation_end(self, trainer, module) -> None:
        self._tick = time.monotonic()
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._write(trainer, epochs=trainer.current_epoch + 1, **self._speed())

    def _speed(self) -> dict:
        return {
            "wall_s": time.monotonic() - self._started, "train_s": self._train_s, "train_samples": self._samples,
            "train_samples_per_s": self._samples / self._train_s if self._train_s else None,
        }

    def on_fit_end(self, trainer, module) -> None:
        best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
        self._write(trainer, status="finished", epochs=trainer.current_epoch, global_step=trainer.global_step,
                    best_val_acc=float(best) if best is not None else None, **self._speed())

    def on_test_end(self, trainer, module) -> None:
        tested = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        if self.record:  # only for a run this callback saw fitting (a sweep); `test` alone makes a new folder
            self._write(trainer, test=tested)

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        if self.record and trainer.state.fn == "fit":
            status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "crashed"
            self._write(trainer, status=status, error=f"{type(exception).__name__}: {exception}"[:500], **self._speed())
