"""Exact resume: what a fit resumed from a checkpoint needs beyond Lightning's own restore (weights, optimizer,
schedule, loop counters, data module and callback states) to train on as the uninterrupted run would have:
where in its epoch the fit is (saved by the data modules, whose loaders resume after the batches trained:
data/batching.py), and the model's part, `ModelResume`, which models/base.py's hooks call. What a resumed fit
may change is checked before it starts, in checks.py.
"""

from __future__ import annotations

import sys
from typing import Optional

import lightning as L
import torch

from .errors import ConfigError


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


class ModelResume:
    """A model's part of an exact resume, in the checkpoint as `rng_state` and `configured_lrs`.

    Random state: Lightning's checkpoints hold none. The CPU generator's state once a step has drawn all it
    draws (before the optimizer's update) comes back before a resumed run's first step, so dropout draws what
    it would have; a Ctrl-C in the middle of a step resumes from the step before. (The CUDA generator's state
    is taken when the checkpoint is written.)

    Learning rate: Lightning restores the optimizer's, so a rate changed on a resumed fit's command line would
    be recorded in config.yaml and ignored. The configured rates go into each checkpoint; when a resumed fit's
    differ, they replace the restored ones (a plateau schedule goes on from them); under a schedule sized in
    steps (OneCycleLR), which sets the rate itself, they are refused.
    """

    def __init__(self):
        self.rng_after_step: Optional[torch.Tensor] = None  # the CPU generator's, once the last step drew all it draws
        self.rng_to_restore: Optional[dict] = None  # a checkpoint's, for the first step of the resumed run
        self.configured_lrs = self.checkpoint_lrs = None  # this run's learning rates and the checkpoint's run's

    def save(self, checkpoint: dict) -> None:
        if self.rng_after_step is not None:
            checkpoint["rng_state"] = {"torch": self.rng_after_step}
            if torch.cuda.is_available():
                checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()
        if self.configured_lrs is not None:
            checkpoint["configured_lrs"] = self.configured_lrs

    def load(self, checkpoint: dict) -> None:
        self.rng_to_restore = checkpoint.get("rng_state")
        self.checkpoint_lrs = checkpoint.get("configured_lrs")

    def step_drawn(self) -> None:
        """The step's random draws are done (called before the optimizer's update)."""
        self.rng_after_step = torch.get_rng_state()

    def restore_random_state(self) -> None:
        """Before a training step: a resumed run's first step draws what the uninterrupted run's did."""
        if self.rng_to_restore is not None:
            torch.set_rng_state(self.rng_to_restore["torch"])
            if "cuda" in self.rng_to_restore and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self.rng_to_restore["cuda"])
            self.rng_to_restore = None

    def configured(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer as this run configured it (its learning rates, scaled)."""
        self.configured_lrs = [group["lr"] for group in optimizer.param_groups]

    def apply_learning_rates(self, trainer: L.Trainer) -> None:
        """At the start of training: a resumed fit configured with other rates than its checkpoint's trains at them."""
        old, new = self.checkpoint_lrs, self.configured_lrs
        self.checkpoint_lrs = None
        if old is None or new is None or old == new or trainer.ckpt_path is None:
            return
        if any(config.interval == "step" for config in trainer.lr_scheduler_configs):
            raise ConfigError(f"model.optimizer lr: the checkpoint's run was configured with {old[0]:g}, this one with "
                              f"{new[0]:g}, but its schedule (sized in steps) sets the rate itself; resume with the "
                              "checkpoint's learning rate, or start a new run")
        for optimizer in trainer.optimizers:
            for group, lr in zip(optimizer.param_groups, new):
                group["lr"] = lr
        print(f"Resuming at learning rate {new[0]:g} (the checkpoint's run was configured with {old[0]:g})", file=sys.stderr)

    @staticmethod
    def replay_plateau_step(module: L.LightningModule) -> None:
        """At the end of an epoch's training, its validation done: Lightning skips epoch-end plateau steps in
        the epoch it resumed in (it might lack the metrics); here they are there, so the step is taken as an
        uninterrupted run takes it."""
        trainer = module.trainer
        if not trainer.fit_loop.restarting:
            return
        for config in trainer.lr_scheduler_configs:
            metric = trainer.callback_metrics.get(config.monitor) if config.monitor else None
            on_time = (module.current_epoch + 1) % config.frequency == 0
            if config.reduce_on_plateau and config.interval == "epoch" and metric is not None and on_time:
                module.lr_scheduler_step(config.scheduler, metric)
