"""EncoderModule: an injected encoder, a linear head, the optimizer wiring and the exact-resume
bookkeeping that the sentiment classifier and the forecaster share."""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric, Metric, MetricCollection

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


class ResumedLearningRate:
    """A fit resumed with another learning rate trains at that rate.

    Lightning restores the optimizer's state from the checkpoint, learning rates included, so a rate
    changed on the command line of a resumed fit would be recorded in config.yaml and ignored. The
    configured rates go into each checkpoint; when a resumed fit's differ, they replace the restored
    ones (a plateau schedule goes on from them). A schedule sized in steps (OneCycleLR) sets the rate
    itself at every step: there a changed rate is refused."""

    _configured_lrs: Optional[list] = None
    _checkpoint_lrs: Optional[list] = None

    def remember_learning_rates(self, optimizer: torch.optim.Optimizer) -> None:
        self._configured_lrs = [group["lr"] for group in optimizer.param_groups]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self._configured_lrs is not None:
            checkpoint["configured_lrs"] = self._configured_lrs

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._checkpoint_lrs = checkpoint.get("configured_lrs")

    def on_train_start(self) -> None:
        super().on_train_start()
        old, new = self._checkpoint_lrs, self._configured_lrs
        self._checkpoint_lrs = None
        if old is None or new is None or old == new or self.trainer.ckpt_path is None:
            return
        if any(config.interval == "step" for config in self.trainer.lr_scheduler_configs):
            raise ConfigError(f"model.optimizer lr: the checkpoint's run was configured with {old[0]:g}, this one with "
                              f"{new[0]:g}, but its schedule (sized in steps) sets the rate itself; resume with the "
                              "checkpoint's learning rate, or start a new run")
        for optimizer in self.trainer.optimizers:
            for group, lr in zip(optimizer.param_groups, new):
                group["lr"] = lr
        print(f"Resuming at learning rate {new[0]:g} (the checkpoint's run was configured with {old[0]:g})", file=sys.stderr)


def logs_this_step(trainer) -> bool:
    """Whether Lightning writes logged step values after the training step now running (every
    `log_every_n_steps` steps, as its logger connector decides it)."""
    return (trainer.global_step + 1) % max(1, trainer.log_every_n_steps) == 0 or trainer.should_stop


def _read_deferred_before_saving(module, prefix, keep_vars) -> None:
    module.read_deferred()  # a state_dict pre-hook: checkpoints hold every finished step's figures


class DeferredFigures:
    """A training step's figures kept on the device until the host next reads values anyway.

    Reading a value (a loss to log, `torch.isfinite(loss)` tested in Python) makes the host wait for
    the device, so a step that reads one can never run ahead of the GPU; on a small model that wait
    is most of a step. So each step only `defer`s its loss, metric inputs and step figures, and the
    host reads them in one go on the steps Lightning logs (every `log_every_n_steps`), before any
    checkpoint is written (a state_dict pre-hook), before validation and at the end of an epoch and
    of a fit. A non-finite loss among them stops the fit there, naming its step: the weights it
    reached are never written, so the checkpoints on disk hold the last good state.

    Subclasses call `defer(loss, size, *metric_inputs, **step_figures)` in their training step and
    may override `consume(losses, sizes, step_figures)` to feed their own epoch metrics.
    """

    def __setattr__(self, name: str, value) -> None:
        # Lightning names the running hook in `_current_fx_name` around each of the ~25 hook calls of a
        # training step; nn.Module.__setattr__'s checks for parameters and submodules cost more than the
        # hooks themselves on a small model. It is a plain string: set it directly.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def nonfinite_message(self, step: int, value: float) -> str:
        return (f"the training loss became {value} at step {step} (epoch {self.current_epoch}); training stopped "
                "and the checkpoints already written are kept. Lower the learning rate or set "
                "--trainer.gradient_clip_val, then resume with --ckpt_path last")

    def defer(self, loss: torch.Tensor, size: int, *metric_inputs: torch.Tensor, **step_figures: torch.Tensor) -> None:
        if "_deferred" not in self.__dict__:
            self.__dict__["_deferred"] = []
            self.register_state_dict_pre_hook(_read_deferred_before_saving)
        self._deferred.append((self.global_step, loss.detach(), size, metric_inputs, step_figures))

    def read_deferred(self, log: bool = False) -> None:
        deferred = self.__dict__.get("_deferred")
        if not deferred:
            return
        self.__dict__["_deferred"] = []
        steps, losses, sizes, inputs, figures = zip(*deferred)
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
        self.consume(losses, sizes, {name: torch.stack([f[name] for f in figures]) for name in figures[0]})
        if log:  # host copies: Lightning re-reads progress-bar values every step, and these cost no device sync
            for (name, _), value in zip(shown.items(), host[1:]):
                self.log(f"train/{name}", value, on_step=True, on_epoch=False, prog_bar=name == "loss")

    def consume(self, losses: torch.Tensor, sizes: tuple[int, ...], figures: dict[str, torch.Tensor]) -> None:
        pass

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")  # which defers the step's figures
        if logs_this_step(self.trainer):
            self.read_deferred(log=True)
        return loss

    def on_validation_start(self) -> None:
        self.read_deferred()  # a diverged fit stops before its validation

    def on_train_end(self) -> None:
        self.read_deferred()


class EncoderModule(DeferredFigures, ResumedLearningRate, RandomStateResume, L.LightningModule):
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
        undefined = self.undefined_metrics(stage)
        values = compute_and_reset(metrics)  # (all processes' states: torchmetrics syncs them itself)
        values = {name: value for name, value in values.items() if name not in undefined}
        loss = getattr(self, f"{stage}_loss", None) if stage != "train" else None
        if isinstance(loss, Metric) and loss.update_count:  # an evaluation loss kept as a metric (the classifier's)
            values = {f"{stage}/loss": compute_and_reset(loss), **values}
        # (sync_dist: the same values on every process then; it keeps Lightning's epoch-level warning quiet)
        self.log_dict(values, prog_bar=stage == "val", sync_dist=True)
        return values

    def undefined_metrics(self, stage: str) -> set[str]:
        """Names of this epoch's metrics that have no value on what the epoch saw (left out of the logs)."""
        return set()

    def on_validation_epoch_end(self) -> None:
        self.log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch_metrics("test")

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
        self.remember_learning_rates(optimizer)
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
        self.read_deferred()
        self.log_epoch_metrics("train")
        if not self.trainer.fit_loop.restarting:
            return
        for config in self.trainer.lr_scheduler_configs:
            metric = self.trainer.callback_metrics.get(config.monitor) if config.monitor else None
            on_time = (self.current_epoch + 1) % config.frequency == 0
            if config.reduce_on_plateau and config.interval == "epoch" and metric is not None and on_time:
                self.lr_scheduler_step(config.scheduler, metric)
