"""EncoderModule: an injected encoder, a linear head, the optimizer wiring and the exact-resume
bookkeeping that the sentiment classifier and the forecaster share."""

from __future__ import annotations

import functools
import inspect
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection

from ..errors import ConfigError, UserError
from .encoders import encoder_spec

STAGES = ("train", "val", "test")


class NonFiniteLossError(UserError):
    pass


def plateau(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """The classifier's default schedule: halve the learning rate when val/loss has not improved for an epoch."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=1)


def scale_learning_rates(optimizer: torch.optim.Optimizer) -> None:
    """Multiply each group's learning rate by its `lr_scale` (the optimizer's lr as set in YAML for scale 1)."""
    for group in optimizer.param_groups:
        group["lr"] *= group.get("lr_scale", 1.0)


def scale_one_cycle(scheduler) -> None:
    # OneCycleLR sets every group's bounds from its one max_lr, whatever the group's lr was: scale them too.
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
        for index, group in enumerate(scheduler.optimizer.param_groups):
            scale = group.get("lr_scale", 1.0)
            for key in ("initial_lr", "max_lr", "min_lr", "lr"):
                group[key] *= scale
            scheduler.base_lrs[index] *= scale


def compute_and_reset(metric):
    """The metric's value over what it has seen (an epoch); then fresh states for the next epoch."""
    value = metric.compute()
    with torch.inference_mode(False):  # fresh states a later fit (outside inference mode) can update in place
        metric.reset()
    return value


def sized_by_steps(factory) -> bool:
    """Whether a scheduler factory takes `total_steps` (torch's OneCycleLR)."""
    # LightningCLI hands over partial(instantiate, SchedulerClass, **init_args); Python code may pass the class.
    if isinstance(factory, functools.partial):
        factory = next((a for a in factory.args if isinstance(a, type)), factory.func)
    try:
        return "total_steps" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a callable without a readable signature
        return False


class RandomStateResume:
    """Exact resume of dropout's random draws, for any LightningModule (put it first among the bases).

    Lightning's checkpoints hold no random state. The CPU generator's state once a step has drawn all
    it draws (forward and backward done, before the optimizer's update) goes into the checkpoint and
    comes back before the first step of a resumed run; a Ctrl-C in the middle of a step thus resumes
    from the step before. (On a GPU the CUDA generator's state is taken when the checkpoint is written.)
    """

    _rng_after_step: Optional[torch.Tensor] = None
    _rng_to_restore: Optional[dict] = None

    def on_before_optimizer_step(self, optimizer) -> None:
        self._rng_after_step = torch.get_rng_state()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._rng_after_step is not None:
            checkpoint["rng_state"] = {"torch": self._rng_after_step}
            if torch.cuda.is_available():
                checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("rng_state")

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self._rng_to_restore is not None:
            torch.set_rng_state(self._rng_to_restore["torch"])
            if "cuda" in self._rng_to_restore and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._rng_to_restore["cuda"])
            self._rng_to_restore = None


class EncoderModule(RandomStateResume, L.LightningModule):
    """encoder -> dropout -> linear head, with `{train,val,test}_metrics` from `metrics()`.

    Subclasses define `metrics()` and `_step(batch, stage)`; the rest is shared: the head,
    plain-data hyperparameters (the encoder as class path + arguments, no pickled objects), the
    optimizer and schedule from YAML, the non-finite-loss stop, and what an exact resume needs
    beyond Lightning's own checkpoint (the random state after the last finished step, through
    `RandomStateResume`, and the training metrics accumulated so far in the epoch).
    """

    def __init__(self, encoder: nn.Module, dropout: float = 0.0, optimizer: OptimizerCallable = torch.optim.Adam,
                 scheduler: Optional[LRSchedulerCallable] = None, monitor: str = "val/loss"):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {dropout}")
        if not hasattr(encoder, "output_dim"):
            raise ConfigError(f"model.encoder {type(encoder).__name__} has no output_dim (the size of its output vector)")
        self.encoder = encoder
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(encoder.output_dim, 1))
        self.optimizer, self.scheduler = optimizer, scheduler
        for stage in STAGES:
            setattr(self, f"{stage}_metrics", self.metrics().clone(prefix=f"{stage}/"))
        # Training metrics run across a whole epoch; persistent states put them in checkpoints, so a
        # run resumed mid-epoch reports the same epoch figures as one never stopped.
        self.train_metrics.persistent(True)

    def save_encoder_hyperparameters(self, ignore: tuple[str, ...] = ()) -> None:
        """Save every constructor argument as plain data; call at the end of a subclass's __init__."""
        self.save_hyperparameters(ignore=["encoder", "optimizer", "scheduler", *ignore], frame=inspect.currentframe().f_back)
        self.hparams["encoder"] = encoder_spec(self.encoder)

    def metrics(self) -> MetricCollection:
        raise NotImplementedError

    def metric_names(self) -> set[str]:
        """Every name this model logs during a fit (what `monitor` options may name)."""
        names = {f"{stage}/{name}" for stage in STAGES for name in [*self.metrics().keys(), "loss"]}
        return names | {"train/loss_epoch"}

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(inputs, lengths)).squeeze(-1)  # (batch,)

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        raise NotImplementedError

    # The stage's metrics are updated in every step and computed, logged and reset once an epoch here.
    # (Logging the metric objects in every step, Lightning's other way, moves each one's states to the
    # device on every call: on a 128-unit model that host work was more than the model's own step.)
    def log_epoch_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        metrics = getattr(self, f"{stage}_metrics")
        if not any(metric.update_count for metric in metrics.values()):
            return {}
        values = compute_and_reset(metrics)  # (all processes' states: torchmetrics syncs them itself)
        # (sync_dist: the same values on every process then; it keeps Lightning's epoch-level warning quiet)
        self.log_dict(values, prog_bar=stage == "val", sync_dist=True)
        return values

    def on_validation_epoch_end(self) -> None:
        self.log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch_metrics("test")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        if not torch.isfinite(loss):  # one host sync per step; the progress bar makes it anyway
            raise NonFiniteLossError(
                f"the training loss became {loss.item()} at step {self.global_step} (epoch {self.current_epoch}); "
                "training stopped and the checkpoints already written are kept. Lower the learning rate or "
                "set --trainer.gradient_clip_val, then resume with --ckpt_path last"
            )
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def parameter_groups(self):
        """What the optimizer gets: the parameters, or groups of them, each with an optional `lr_scale`."""
        return self.parameters()

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameter_groups())
        scale_learning_rates(optimizer)
        if self.scheduler is None:
            return optimizer
        # A schedule that takes `total_steps` (torch's OneCycleLR) is sized to this run and stepped every
        # batch, so `scheduler: {class_path: torch.optim.lr_scheduler.OneCycleLR, init_args: {max_lr: ..}}`
        # needs no step count in the YAML; any other schedule is stepped once per epoch.
        if sized_by_steps(self.scheduler):
            scheduler = self.scheduler(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
            scale_one_cycle(scheduler)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        scheduler = self.scheduler(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": self.hparams.monitor}}

    # --- exact resume: a plateau schedule's step at the end of a resumed epoch ---------------------
    # Lightning skips epoch-end plateau steps in the epoch it resumed in (it might lack the metrics);
    # here that epoch's validation has just run, so the step is taken as an uninterrupted run takes it.
    def on_train_epoch_end(self) -> None:
        self.log_epoch_metrics("train")
        if not self.trainer.fit_loop.restarting:
            return
        for config in self.trainer.lr_scheduler_configs:
            metric = self.trainer.callback_metrics.get(config.monitor) if config.monitor else None
            on_time = (self.current_epoch + 1) % config.frequency == 0
            if config.reduce_on_plateau and config.interval == "epoch" and metric is not None and on_time:
                self.lr_scheduler_step(config.scheduler, metric)
