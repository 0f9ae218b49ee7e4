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
from .runs import (
    FORMAT,
    RECORD,
    add_evaluation,
    checkpoint_entry,
    config_changes,
    now,
    read_record,
    run_configuration,
    write_record,
)

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

    resume_hint = "Resume with --ckpt_path last"  # (a sweep or a study says how it goes on)

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
        print(f"\nInterrupted at step {trainer.global_step}; {self.path(trainer)} holds it. {self.resume_hint}",
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
    """Keeps `run.json`, the run folder's record (its fields: runs.py): what ran, its status and speed,
    each segment of training with the configuration it ran with, the data its figures mean, its best
    checkpoint, and each evaluation with the checkpoint and data it read.

    The training totals (time, samples) travel in every checkpoint, so a run resumed after a kill
    counts each trained batch once. A run killed before the end stays "running"; `compare` lists it
    as unfinished rather than averaging it in.
    """

    def __init__(self):
        self.extra: dict = {}  # set by `imdb-lightning sweep` and `tune`: the run's sweep key, encoder, trial
        self.configuration: Optional[dict] = None  # this segment's resolved configuration (set by the command line)
        self.settings_from = "checkpoint"  # where an evaluation's data settings came from (set by the command line)
        self.record: dict = {}
        self._train_s, self._samples, self._tokens, self._tick, self._started = 0.0, 0, 0, 0.0, 0.0
        self._restored: Optional[dict] = None  # the totals in the checkpoint a fit resumes from
        self._from: dict = {}  # epoch and step of that checkpoint
        self._seen = 0  # reviews (or windows) read by this validate / test
        self._file: Optional[Path] = None

    # --- the totals, saved in checkpoints --------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"train_s": self._train_s, "train_samples": self._samples, "train_tokens": self._tokens}

    def load_state_dict(self, state: dict) -> None:
        self._restored = dict(state)

    def on_load_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        self._from = {"epoch": checkpoint.get("epoch"), "step": checkpoint.get("global_step")}

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
        resumed = kind == "fit" and trainer.ckpt_path is not None
        previous = read_record(path.parent) if path and path.is_file() and trainer.is_global_zero else {}
        # A resume goes on with its record; a fresh fit in a folder used before (a sweep cell started
        # again) starts a new one: the old one's figures were of checkpoints it replaces.
        self.record = dict(previous) if resumed else {}
        totals = self._restored if resumed and self._restored else self.record  # (checkpoints from before: the record's)
        self._train_s, self._samples = totals.get("train_s", 0.0), totals.get("train_samples", 0)
        self._tokens = totals.get("train_tokens", 0)
        for stale in ("error", "test"):  # a resumed run's test figures were of its checkpoint then: see evaluations
            self.record.pop(stale, None)
        self._started = time.monotonic() - self.record.get("wall_s", 0.0)
        seed = os.environ.get("PL_GLOBAL_SEED")
        fields = dict(format=FORMAT, kind=self.record.get("kind", kind), status="running",
                      parameters=sum(p.numel() for p in module.parameters()), seed=int(seed) if seed is not None else None)
        if kind == "fit" and trainer.is_global_zero and path:
            segment = self._segment(trainer, path.parent, previous, resumed)
            fields["segments"] = [*map(dict, self.record.get("segments", [])), segment]
            for earlier in fields["segments"][:-1]:  # one still "running" was killed: what it kept ends where this starts
                if earlier.get("status") == "running":
                    earlier.update(status="killed", end_step=(segment["from_checkpoint"] or {}).get("step"))
        self._write(trainer, **fields)

    def _segment(self, trainer: L.Trainer, folder: Path, previous: dict, resumed: bool) -> dict:
        """This stretch of training: the configuration it runs with and what it changed."""
        start = None
        changes = {}
        if resumed:
            start = checkpoint_entry(folder, trainer.ckpt_path, **self._from)
            before = run_configuration(folder, previous) or run_configuration(Path(trainer.ckpt_path).parent.parent)
            changes = config_changes(before, self.configuration) if before and self.configuration else {}
            if changes:
                said = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changes.items())
                print(f"Resuming with {said} (the checkpoint's run had the former; recorded in {folder / RECORD}, "
                      f"segment {len(previous.get('segments', [])) + 1})", file=sys.stderr, flush=True)
        return {"started": now(), "status": "running", "from_checkpoint": start, "start_step": None,
                "config": self.configuration, "changes": changes}

    def _end_segment(self, trainer: L.Trainer, status: str) -> None:
        segments = self.record.get("segments")
        if segments:
            segments[-1].update(ended=now(), status=status, end_step=trainer.global_step)

    def on_fit_start(self, trainer, module) -> None:
        self._begin(trainer, module, "fit")

    def on_train_start(self, trainer, module) -> None:
        self._tick = time.monotonic()  # also after a mid-epoch resume, which skips on_train_epoch_start
        fields = {}
        validation = getattr(trainer.datamodule, "validation", None)
        if validation:
            fields["validation"] = validation
        identity = getattr(trainer.datamodule, "identity", None)
        if callable(identity) and trainer.is_global_zero:
            fields["data"] = identity()
        if self.record.get("segments"):
            self.record["segments"][-1]["start_step"] = trainer.global_step
        self._write(trainer, **fields)

    def on_train_epoch_start(self, trainer, module) -> None:
        self._tick = time.monotonic()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        # counted as the batch starts: a checkpoint written as it ends (last.ckpt) then holds its samples
        self._samples, self._tokens = self._samples + batch_size(batch, "samples"), self._tokens + batch_size(batch, "tokens")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        now_ = time.monotonic()  # time since the previous training batch: loading, step and logging
        self._train_s += now_ - self._tick
        self._tick = now_

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.state.fn == "validate":
            self._seen += batch_size(batch, "samples")

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._seen += batch_size(batch, "samples")

    def on_validation_end(self, trainer, module) -> None:
        self._tick = time.monotonic()
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._write(trainer, epochs=trainer.current_epoch + 1, **self._speed())
        elif trainer.state.fn == "validate" and self.record.get("kind") == "validate":
            figures = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self._write(trainer, status="finished", val=figures, validation=getattr(trainer.datamodule, "validation", None),
                        **self._evaluated(trainer, "validate", figures))

    def _speed(self) -> dict:
        unit, count = ("tokens", self._tokens) if self._tokens else ("samples", self._samples)
        return {"wall_s": time.monotonic() - self._started, "train_s": self._train_s, f"train_{unit}": count,
                f"train_{unit}_per_s": count / self._train_s if self._train_s else None}

    def on_fit_end(self, trainer, module) -> None:
        saver = trainer.checkpoint_callback
        best = saver.best_model_score if saver else None
        name = "best_val_acc" if saver and saver.monitor == "val/acc" else "best"  # a language model's: its val/loss
        fields = {name: float(best) if best is not None else None} if saver else {}
        figures = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if figures:  # (a resume with nothing left to train validates nothing: the figures stay)
            fields["val"] = figures
        path = self._path(trainer)
        if saver and saver.best_model_path and Path(saver.best_model_path).is_file() and path and trainer.is_global_zero:
            fields["best_checkpoint"] = checkpoint_entry(path.parent, saver.best_model_path, monitor=saver.monitor,
                                                         score=fields.get(name))
        self._end_segment(trainer, "finished")
        self._write(trainer, status="finished", epochs=trainer.current_epoch, global_step=trainer.global_step,
                    **fields, **self._speed())

    def on_validation_start(self, trainer, module) -> None:
        if trainer.state.fn == "validate" and not self.record:
            self._begin(trainer, module, "validate")
        if trainer.state.fn == "validate":
            self._seen = 0

    def on_test_start(self, trainer, module) -> None:
        if not self.record:  # `imdb-lightning test` alone: a record of its own
            self._begin(trainer, module, "test")
        self._seen = 0

    def on_test_end(self, trainer, module) -> None:
        tested = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        self._write(trainer, **self._evaluated(trainer, "test", tested),
                    **({"status": "finished"} if self.record.get("kind") == "test" else {}))

    def _evaluated(self, trainer: L.Trainer, stage: str, figures: dict) -> dict:
        """The record's fields after an evaluation: it added, with the checkpoint and the data it read."""
        path = self._path(trainer)
        if not trainer.is_global_zero or path is None:
            return {}
        folder, ckpt = path.parent, trainer.ckpt_path
        entry = checkpoint_entry(folder, ckpt) if ckpt and Path(ckpt).is_file() else None
        identity = getattr(trainer.datamodule, "identity", None)
        evaluation = {"stage": stage, "time": now(), "checkpoint": entry,
                      "data": identity("test" if stage == "test" else "val") if callable(identity) else None,
                      "reviews_seen": self._seen, "settings_from": self.settings_from, "figures": figures}
        record = add_evaluation(self.record, evaluation)
        extra = {"checkpoint": entry["path"]} if entry and record.get("kind") in ("test", "validate") else {}
        return {"evaluations": record["evaluations"], **({"test": record["test"]} if "test" in record else {}), **extra}

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        # (an Optuna trial stopped by its pruner is an outcome, not a crash: `imdb-lightning tune`)
        status = ("interrupted" if isinstance(exception, KeyboardInterrupt) else
                  "pruned" if type(exception).__name__ == "TrialPruned" else "crashed")
        reason = str(exception) or ("Ctrl-C" if type(exception) is KeyboardInterrupt else "")
        error = f"{type(exception).__name__}: {reason}".removesuffix(": ")[:500]
        if self.record:
            self._end_segment(trainer, status)
            self._write(trainer, status=status, error=error, **self._speed())
        elif self._file is not None and self._file.parent.is_dir():
            # stopped after its folder was made, before the run began (in setup, or an optimizer torch refused):
            # the folder says how it ended rather than look like a run that never wrote its record. A record
            # of a run that did begin (a refused resume) is its history and is left as it is.
            try:
                previous = read_record(self._file.parent)
            except UserError:  # an unreadable record is replaced, not a second error on top of this one
                previous = {}
            if previous.get("status", "claimed") == "claimed":  # none yet, or a sweep cell's claim
                self.record = previous or {"kind": trainer.state.fn.value if trainer.state.fn else None}
                self._write(trainer, status=status, error=error)


def batch_size(batch, unit: str) -> int:
    """Reviews (or windows of a series) in a batch, or the tokens a language model's batch predicts."""
    if not isinstance(batch, dict):
        return 0
    if unit == "tokens":
        return int(batch["targets"].numel()) if "targets" in batch else 0
    labels = batch.get("labels", batch.get("target"))  # a classifier's reviews, a forecaster's windows
    return len(labels) if labels is not None else 0

