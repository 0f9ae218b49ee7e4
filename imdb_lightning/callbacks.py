"""Callbacks that keep work safe: a checkpoint on Ctrl-C."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


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
