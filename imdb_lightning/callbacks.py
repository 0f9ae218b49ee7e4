"""Callbacks of every run: `last.ckpt` kept current, and `run.json`, the record `compare` reads."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from .errors import Stopped, UserError
from .runs import RECORD, read_record, write_record

AGREE_EVERY = 10  # steps between multi-process checks for a Ctrl-C


class LastCheckpoint(L.Callback):
    """Keeps `checkpoints/last.ckpt` the newest state of a fit, the one to resume from.

    Written after every `every_n_train_steps` steps and after each epoch's next-to-last step,
    at the end of the fit, and on Ctrl-C or SIGTERM, which lets the step in progress finish, writes
    last.ckpt at that clean point and stops (a second one stops at once). Checkpoints inside
    an epoch are the ones Lightning resumes exactly from; from one written at an epoch's end it
    would skip that epoch's validation and scheduler step. So the epoch's last step is left to
    replay: a resume from the next-to-last step redoes one step and the epoch's validation, the
    same figures. Lightning writes checkpoints to a temporary file and renames it, so a kill
    never leaves half a file. After a non-finite loss nothing is written: the last good state stays.
    """

    def __init__(self, every_n_train_steps: int = 200):
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be at least 1, got {every_n_train_steps}")
        self.every_n_train_steps = every_n_train_steps
        self._saved_step: Optional[int] = None
        self._interrupted: Optional[str] = None  # the signal that asked for a stop: "Ctrl-C" or "SIGTERM"
        self._previous_handlers: dict = {}

    @staticmethod
    def path(trainer: L.Trainer) -> Path:
        best = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath), None)
        folder = Path(best.dirpath) if best else Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
        return folder / "last.ckpt"

    def _save(self, trainer: L.Trainer) -> Optional[Path]:
        if trainer.sanity_checking or trainer.fast_dev_run or trainer.state.fn != "fit":
            return None
        if trainer.global_step == self._saved_step:
            return None
        path = self.path(trainer)
        trainer.save_checkpoint(path, weights_only=False)
        self._saved_step = trainer.global_step
        return path

    # --- Ctrl-C: stop at the next clean point --------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        if self._interrupted:  # the second one: stop now, keep the last.ckpt already written
            self._restore_handler()
            raise self._interruption(name, "again, during a step")
        self._interrupted = name
        print(f"\n{name}: stopping once this step is done, after writing last.ckpt ({name} again to stop at once)",
              file=sys.stderr, flush=True)

    @staticmethod
    def _interruption(name: str, detail: str) -> KeyboardInterrupt:
        # what run.json records as the reason
        return Stopped(name, detail) if name == "SIGTERM" else KeyboardInterrupt(f"{name} {detail}")

    def _restore_handler(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def _asked(self, trainer: L.Trainer) -> bool:
        if trainer.world_size > 1:
            # Every process stops at the same step. Agreeing is a collective (each process waits for the
            # others and for its device), so it is asked every AGREE_EVERY steps, not every step.
            if trainer.global_step % AGREE_EVERY:
                return False
            return trainer.strategy.reduce_boolean_decision(bool(self._interrupted), all=False)
        return bool(self._interrupted)

    def _stop(self, trainer: L.Trainer) -> None:
        print(f"\nInterrupted at step {trainer.global_step}; {self.path(trainer)} holds it. Resume with --ckpt_path last",
              flush=True)
        raise self._interruption(self._interrupted or "Ctrl-C", f"at step {trainer.global_step}; last.ckpt holds it")

    # --- Lightning hooks ----------------------------------------------------------------------------
    def on_train_start(self, trainer, module) -> None:
        self._saved_step = trainer.global_step  # resumed or new: this state is on disk already (or is step 0)
        self._interrupted = None
        if threading.current_thread() is threading.main_thread():
            self._previous_handlers = {signum: signal.signal(signum, self._on_signal)
                                       for signum in (signal.SIGINT, signal.SIGTERM)}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        left = trainer.num_training_batches - (batch_idx + 1)  # batches left in this epoch
        if left == 0:
            return
        if trainer.global_step % self.every_n_train_steps == 0 or left == 1 or self._asked(trainer):
            self._save(trainer)
        # A stop waits for the next batch: Lightning logs this step's figures after this hook.

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self._interrupted and self._saved_step == trainer.global_step:
            self._stop(trainer)

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        # during an epoch's validation: last.ckpt holds its next-to-last step, and a resume redoes the rest
        if self._interrupted and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._stop(trainer)

    def on_train_epoch_start(self, trainer, module) -> None:
        if self._interrupted:
            self._stop(trainer)

    def on_train_end(self, trainer, module) -> None:
        self._restore_handler()
        self._save(trainer)  # a fit cut short by max_steps mid-epoch

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        self._restore_handler()


class RunRecord(L.Callback):
    """Keeps `run.json` in the run folder: what ran (fit, validate or test), its status, wall time,
    training speed, how validation was carved, and the figures.

    `imdb-lightning compare` reads it; a run killed before the end stays "running", and is
    listed as unfinished rather than averaged in.
    """

    def __init__(self):
        self.extra: dict = {}  # set by `imdb-lightning sweep`: the run's sweep key and encoder name
        self.record: dict = {}
        self._train_s, self._samples, self._tokens, self._tick, self._started = 0.0, 0, 0, 0.0, 0.0
        self._file: Optional[Path] = None

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective call under DDP (rank 0 broadcasts it): ask once, while every
        # process is here, never from a hook that one process alone may reach (an exception).
        self._file = Path(trainer.log_dir) / RECORD if trainer.logger and trainer.log_dir else None

    def _path(self, trainer: L.Trainer) -> Optional[Path]:
        return self._file

    def _write(self, trainer: L.Trainer, **fields) -> None:
        self.record.update(fields)
        path = self._path(trainer)
        if trainer.is_global_zero and path:
            write_record(path.parent, {**self.record, **self.extra})

    def _begin(self, trainer: L.Trainer, module: L.LightningModule, kind: str) -> None:
        path = self._path(trainer)
        if path and path.is_file():  # a resumed run keeps its totals so far
            self.record = read_record(path.parent)
            self._train_s, self._samples = self.record.get("train_s", 0.0), self.record.get("train_samples", 0)
            self._tokens = self.record.get("train_tokens", 0)
        self.record.pop("error", None)
        self._started = time.monotonic() - self.record.get("wall_s", 0.0)
        seed = os.environ.get("PL_GLOBAL_SEED")
        self._write(trainer, kind=self.record.get("kind", kind), status="running",
                    parameters=sum(p.numel() for p in module.parameters()),
                    seed=int(seed) if seed is not None else None,
                    checkpoint=str(trainer.ckpt_path) if trainer.ckpt_path else self.record.get("checkpoint"))

    def on_fit_start(self, trainer, module) -> None:
        self._begin(trainer, module, "fit")

    def on_train_start(self, trainer, module) -> None:
        self._tick = time.monotonic()  # also after a mid-epoch resume, which skips on_train_epoch_start
        validation = getattr(trainer.datamodule, "validation", None)
        if validation:
            self._write(trainer, validation=validation)

    def on_train_epoch_start(self, trainer, module) -> None:
        self._tick = time.monotonic()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()  # time since the previous training batch: loading, step and logging
        self._train_s += now - self._tick
        self._tick = now
        if isinstance(batch, dict) and "labels" in batch:
            self._samples += len(batch["labels"])
        elif isinstance(batch, dict) and "targets" in batch:  # a language model's window: its speed is in tokens
            self._tokens += batch["targets"].numel()

    def on_validation_end(self, trainer, module) -> None:
        self._tick = time.monotonic()
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._write(trainer, epochs=trainer.current_epoch + 1, **self._speed())
        elif trainer.state.fn == "validate" and self.record.get("kind") == "validate":
            figures = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self._write(trainer, status="finished", val=figures, validation=getattr(trainer.datamodule, "validation", None))

    def _speed(self) -> dict:
        unit, count = ("tokens", self._tokens) if self._tokens else ("samples", self._samples)
        return {"wall_s": time.monotonic() - self._started, "train_s": self._train_s, f"train_{unit}": count,
                f"train_{unit}_per_s": count / self._train_s if self._train_s else None}

    def on_fit_end(self, trainer, module) -> None:
        saver = trainer.checkpoint_callback
        best = saver.best_model_score if saver else None
        name = "best_val_acc" if saver and saver.monitor == "val/acc" else "best"  # a language model's: its val/loss
        best = {name: float(best) if best is not None else None} if saver else {}
        figures = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self._write(trainer, status="finished", epochs=trainer.current_epoch, global_step=trainer.global_step,
                    **best, val=figures, **self._speed())

    def on_validation_start(self, trainer, module) -> None:
        if trainer.state.fn == "validate" and not self.record:
            self._begin(trainer, module, "validate")

    def on_test_start(self, trainer, module) -> None:
        if not self.record:  # `imdb-lightning test` alone: a record of its own
            self._begin(trainer, module, "test")

    def on_test_end(self, trainer, module) -> None:
        tested = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        self._write(trainer, test=tested, **({"status": "finished"} if self.record.get("kind") == "test" else {}))

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        # (an Optuna trial stopped by its pruner is an outcome, not a crash: `imdb-lightning tune`)
        status = ("interrupted" if isinstance(exception, KeyboardInterrupt) else
                  "pruned" if type(exception).__name__ == "TrialPruned" else "crashed")
        error = f"{type(exception).__name__}: {exception}"[:500]
        if self.record:
            self._write(trainer, status=status, error=error, **self._speed())
        elif self._file is not None and self._file.parent.is_dir():
            # stopped after its folder was made, before the run began (in setup, or an optimizer torch refused):
            # the folder says how it ended rather than look like a run that never wrote its record
            try:
                self.record = read_record(self._file.parent)
            except UserError:  # an unreadable record is replaced, not a second error on top of this one
                self.record = {}
            self.record = self.record or {"kind": trainer.state.fn.value if trainer.state.fn else None}
            self._write(trainer, status=status, error=error)


def training_progress(trainer: L.Trainer) -> tuple[int, int]:
    """(epoch, batches of it trained) for the epoch the fit loop is in, or is about to start."""
    epochs = trainer.fit_loop.epoch_progress.current
    if epochs.started == epochs.processed:  # between epochs: the next one has not begun
        return epochs.processed, 0
    return epochs.processed, trainer.fit_loop.epoch_loop.batch_progress.current.processed


def train_position(datamodule: L.LightningDataModule) -> dict:
    """{"train_position": {epoch, batches_done}} while its trainer fits, for the data module's state_dict; else {}."""
    trainer = getattr(datamodule, "trainer", None)
    if trainer is None or trainer.state.fn != "fit":
        return {}
    epoch, done = training_progress(trainer)
    return {"train_position": {"epoch": epoch, "batches_done": done}}
