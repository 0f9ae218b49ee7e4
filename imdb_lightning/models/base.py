"""TrainingModule: how every model here trains (the sentiment classifier, the language model, the forecaster).

Read top to bottom: the optimizer and its schedule, the training step's figures kept on the device and the
non-finite-loss stop, each stage's epoch figures, and Lightning's hooks, which call the exact-resume pieces
(resume.py). A model adds its layers, its `_step(batch, stage)` and its metrics.
"""

from __future__ import annotations

import functools
import inspect
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric, Metric, MetricCollection

from ..errors import ConfigError, UserError
from ..resume import ModelResume
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


def sized_by_steps(factory) -> bool:
    """Whether a scheduler factory takes `total_steps` (torch's OneCycleLR)."""
    # LightningCLI hands over partial(instantiate, SchedulerClass, **init_args); Python code may pass the class.
    if isinstance(factory, functools.partial):
        factory = next((a for a in factory.args if isinstance(a, type)), factory.func)
    try:
        return "total_steps" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a callable without a readable signature
        return False


class WeightedMean(MeanMetric):
    """A mean of values with weights (a batch's loss weighs as many reviews as it had), without MeanMetric's
    NaN check, which reads the device every step: MeanMetric with nan_strategy "disable" drops the weights
    too, and an epoch's loss would be the mean of its batches' losses, whatever their sizes."""

    def __init__(self, **kwargs):
        super().__init__(nan_strategy="disable", **kwargs)

    def update(self, value, weight=1.0) -> None:
        value = torch.as_tensor(value, dtype=self.dtype, device=self.device)
        weight = torch.broadcast_to(torch.as_tensor(weight, dtype=self.dtype, device=self.device), value.shape)
        self.mean_value += (value * weight).sum()
        self.weight += weight.sum()


def compute_and_reset(metric):
    """The metric's value over what it has seen (an epoch); then fresh states for the next epoch."""
    value = metric.compute()
    with torch.inference_mode(False):  # fresh states a later fit (outside inference mode) can update in place
        metric.reset()
    return value


def logs_this_step(trainer) -> bool:
    """Whether Lightning writes logged step values after the training step now running (every
    `log_every_n_steps` steps, as its logger connector decides it)."""
    return (trainer.global_step + 1) % max(1, trainer.log_every_n_steps) == 0 or trainer.should_stop


def linear_head(encoder: nn.Module, dropout: float) -> nn.Sequential:
    """dropout -> linear, from the encoder's output vector to one number (a logit, a forecast)."""
    if not 0 <= dropout < 1:
        raise ConfigError(f"model.dropout must be in [0, 1), got {dropout}")
    if not hasattr(encoder, "output_dim"):
        raise ConfigError(f"model.encoder {type(encoder).__name__} has no output_dim (the size of its output vector)")
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(encoder.output_dim, 1))


def _read_deferred_before_saving(module, prefix, keep_vars) -> None:
    module.read_deferred()  # a state_dict pre-hook: checkpoints hold every finished step's figures


class TrainingModule(L.LightningModule):
    """An injected encoder trained by a subclass's `_step(batch, stage) -> loss`.

    In training, `_step` hands its figures to `defer` (its losses go into `train_loss`, a WeightedMean the
    subclass makes); in evaluation it updates `{stage}_metrics` (from `track_metrics`) and `{stage}_loss`.
    Each epoch's figures are computed, logged and reset here (`log_epoch_metrics`). Hyperparameters are plain
    data (`save_encoder_hyperparameters`: the encoder as class path + arguments, no pickled objects); the
    optimizer and its schedule come from YAML.
    """

    def __init__(self, encoder: nn.Module, optimizer: OptimizerCallable = torch.optim.Adam,
                 scheduler: Optional[LRSchedulerCallable] = None):
        super().__init__()
        self.encoder, self.optimizer, self.scheduler = encoder, optimizer, scheduler
        self.exact_resume = ModelResume()
        self._deferred: list[tuple] = []  # (step, loss, size, metric inputs, step figures) not read yet
        self.register_state_dict_pre_hook(_read_deferred_before_saving)

    def __setattr__(self, name: str, value) -> None:
        # Lightning names the running hook in `_current_fx_name` around each of the ~25 hook calls of a
        # training step; nn.Module.__setattr__'s checks for parameters and submodules cost more than the
        # hooks themselves on a small model (~40 µs a step, docs/speed.md). It is a plain string: set it directly.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def save_encoder_hyperparameters(self, **extra) -> None:
        """Save every constructor argument as plain data; call at the end of a subclass's __init__."""
        self.save_hyperparameters(ignore=["encoder", "optimizer", "scheduler"], frame=inspect.currentframe().f_back)
        self.hparams.update(encoder=encoder_spec(self.encoder), **extra)

    def track_metrics(self, metrics: MetricCollection) -> None:
        """`{train,val,test}_metrics`: the collection for each stage, its names prefixed `train/`, `val/`, `test/`."""
        for stage in STAGES:
            setattr(self, f"{stage}_metrics", metrics.clone(prefix=f"{stage}/"))
        # Training metrics run across a whole epoch; persistent states put them in checkpoints, so a
        # run resumed mid-epoch reports the same epoch figures as one never stopped.
        self.train_metrics.persistent(True)

    # --- the optimizer and its schedule ----------------------------------------------------------------
    def parameter_groups(self):
        """What the optimizer gets: the parameters, or groups of them, each with an optional `lr_scale`."""
        return self.parameters()

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameter_groups())
        scale_learning_rates(optimizer)
        self.exact_resume.configured(optimizer)
        if self.scheduler is None:
            return optimizer
        # A schedule that takes `total_steps` (torch's OneCycleLR) is sized to this run and stepped every
        # batch, so `scheduler: {class_path: torch.optim.lr_scheduler.OneCycleLR, init_args: {max_lr: ..}}`
        # needs no step count in the YAML; any other schedule is stepped once per epoch, on `monitor`.
        if sized_by_steps(self.scheduler):
            scheduler = self.scheduler(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
            scale_one_cycle(scheduler)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        monitor = self.hparams.get("monitor", "val/loss")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "monitor": monitor}}

    # --- the training step: its figures wait on the device -----------------------------------------------
    # Reading a value (a loss to log, `torch.isfinite(loss)` tested in Python) makes the host wait for the
    # device, so a step that reads one can never run ahead of the GPU; on a small model that wait is most of
    # a step. So each step only `defer`s its loss, metric inputs and step figures, and the host reads them in
    # one go on the steps Lightning logs (every `log_every_n_steps`), before any checkpoint is written (a
    # state_dict pre-hook), before validation and at the end of an epoch and of a fit. A non-finite loss
    # among them stops the fit there, naming its step: the weights it reached are never written, so the
    # checkpoints on disk hold the last good state.
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")  # which defers the step's figures
        if logs_this_step(self.trainer):
            self.read_deferred(log=True)
        return loss

    def defer(self, loss: torch.Tensor, size: int, *metric_inputs: torch.Tensor, **step_figures: torch.Tensor) -> None:
        """Keep a training step's loss (over `size` samples), train_metrics' inputs and other figures for the next read."""
        self._deferred.append((self.global_step, loss.detach(), size, metric_inputs, step_figures))

    def read_deferred(self, log: bool = False) -> None:
        if not self._deferred:
            return
        steps, losses, sizes, inputs, figures = zip(*self._deferred)
        self._deferred = []
        losses = torch.stack(losses)  # (steps,)
        finite = torch.isfinite(losses)
        shown = {"loss": losses[-1], **{name: value.detach() for name, value in figures[-1].items()}}
        # the one host read: are all the losses finite, and the last step's figures for the logger
        host = torch.stack([finite.all().to(losses.dtype), *(v.to(losses.dtype) for v in shown.values())]).cpu()
        if not host.tolist()[0]:
            first = int((~finite).nonzero()[0])
            raise NonFiniteLossError(self.nonfinite_message(steps[first], float(losses[first])))
        if inputs[0]:
            self.train_metrics.update(*(torch.cat(parts) for parts in zip(*inputs)))
        weights = losses.new_tensor(sizes)  # (steps,): each step's loss weighs as many samples as it saw
        self.train_loss.update(losses, weights)
        self.consume(weights, {name: torch.stack([f[name] for f in figures]) for name in figures[0]})
        if log:  # host copies: Lightning re-reads progress-bar values every step, and these cost no device sync
            for (name, _), value in zip(shown.items(), host[1:]):
                self.log(f"train/{name}", value, on_step=True, on_epoch=False, prog_bar=name == "loss")

    def consume(self, weights: torch.Tensor, figures: dict[str, torch.Tensor]) -> None:
        """Feed a subclass's own epoch means from the read steps' figures (each (steps,)), weighted by their sizes."""

    def nonfinite_message(self, step: int, value: float) -> str:
        return (f"the training loss became {value} at step {step} (epoch {self.current_epoch}); training stopped "
                "and the checkpoints already written are kept. Lower the learning rate or set "
                "--trainer.gradient_clip_val, then resume with --ckpt_path last")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    # --- each stage's epoch figures ------------------------------------------------------------------------
    # The stage's metrics are updated in every step and computed, logged and reset once an epoch here.
    # (Logging the metric objects in every step, Lightning's other way, moves each one's states to the
    # device on every call: on a 128-unit model that host work was more than the model's own step.)
    def epoch_losses(self, stage: str) -> dict[str, Metric]:
        """The stage's loss means by the name they are logged under (`train/loss_epoch` beside the steps' `train/loss`)."""
        loss = getattr(self, f"{stage}_loss", None)
        return {"train/loss_epoch" if stage == "train" else f"{stage}/loss": loss} if isinstance(loss, Metric) else {}

    def log_epoch_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        values = {name: compute_and_reset(loss) for name, loss in self.epoch_losses(stage).items() if loss.update_count}
        metrics = getattr(self, f"{stage}_metrics", None)
        if metrics is not None and any(metric.update_count for metric in metrics.values()):
            undefined = self.undefined_metrics(stage)
            # (all processes' states: torchmetrics syncs them itself)
            values.update((name, value) for name, value in compute_and_reset(metrics).items() if name not in undefined)
        # (sync_dist: the same values on every process then; it keeps Lightning's epoch-level warning quiet)
        if values:
            self.log_dict(values, prog_bar=stage == "val", sync_dist=True)
        return values

    def undefined_metrics(self, stage: str) -> set[str]:
        """Names of this epoch's metrics that have no value on what the epoch saw (left out of the logs)."""
        return set()

    def metric_names(self) -> set[str]:
        """Every name this model logs during a fit (what `monitor` options may name)."""
        names = {f"{stage}/loss" for stage in STAGES} | {"train/loss_epoch"}
        return names.union(*(getattr(self, f"{stage}_metrics", {}).keys() for stage in STAGES))

    # --- Lightning's hooks, in the order a fit calls them ------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.exact_resume.load(checkpoint)

    def on_train_start(self) -> None:
        self.exact_resume.apply_learning_rates(self.trainer)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.exact_resume.restore_random_state()

    def on_before_optimizer_step(self, optimizer) -> None:
        self.exact_resume.step_drawn()

    def on_validation_start(self) -> None:
        self.read_deferred()  # a diverged fit stops before its validation

    def on_validation_epoch_end(self) -> None:
        self.log_epoch_metrics("val")

    def on_train_epoch_end(self) -> None:
        self.read_deferred()
        self.log_epoch_metrics("train")
        self.exact_resume.replay_plateau_step(self)

    def on_train_end(self) -> None:
        self.read_deferred()

    def on_test_epoch_end(self) -> None:
        self.log_epoch_metrics("test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.exact_resume.save(checkpoint)
