"""SentimentClassifier: any encoder + a linear head, trained with one shared step."""

from __future__ import annotations

import functools
import inspect
from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryConfusionMatrix,
    BinaryF1Score,
    BinaryROC,
)

from .encoders import encoder_spec
from .errors import ConfigError, UserError

STAGES = ("train", "val", "test")


class NonFiniteLossError(UserError):
    pass


def plateau(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """The default schedule: halve the learning rate when val/loss has not improved for an epoch."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=1)


def _sized_by_steps(factory) -> bool:
    # LightningCLI hands over partial(instantiate, SchedulerClass, **init_args); Python code may pass the class.
    if isinstance(factory, functools.partial):
        factory = next((a for a in factory.args if isinstance(a, type)), factory.func)
    try:
        return "total_steps" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a callable without a readable signature
        return False


class SentimentClassifier(L.LightningModule):
    """Binary sentiment classifier over an injected encoder.

    Args:
        encoder: an `nn.Module` with `output_dim`, called as encoder(input_ids, lengths).
        dropout: dropout on the encoder's output, before the linear head.
        optimizer: optimizer factory (default Adam, lr 1e-3).
        scheduler: LR scheduler factory (default `plateau`, stepped on `monitor`); null for none.
        monitor: the metric a plateau scheduler watches.
        adversarial: > 0 adds adversarial training on the word embeddings (Miyato et al. 2017): each
            training review is also scored with its embeddings pushed along the loss gradient by this
            fraction of their own L2 norm, and that loss is added. Needs an encoder with an `embedding`.
    """

    def __init__(
        self,
        encoder: nn.Module,
        dropout: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: Optional[LRSchedulerCallable] = plateau,
        monitor: str = "val/loss",
        adversarial: float = 0.0,
    ):
        super().__init__()
        if adversarial < 0:
            raise ConfigError(f"model.adversarial must be 0 (off) or positive, got {adversarial}")
        if adversarial and not isinstance(getattr(encoder, "embedding", None), nn.Embedding):
            raise ConfigError(f"model.adversarial perturbs word embeddings; {type(encoder).__name__} has no `embedding`")
        self.encoder = encoder
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(encoder.output_dim, 1))
        self.optimizer, self.scheduler = optimizer, scheduler
        # Checkpoints hold plain data only: the encoder as class path + arguments, no pickled objects.
        self.save_hyperparameters(ignore=["encoder", "optimizer", "scheduler"])
        self.hparams["encoder"] = encoder_spec(encoder)
        metrics = MetricCollection({"acc": BinaryAccuracy(), "f1": BinaryF1Score(), "auroc": BinaryAUROC()})
        for stage in STAGES:
            setattr(self, f"{stage}_metrics", metrics.clone(prefix=f"{stage}/"))
        # Test-time pictures for TensorBoard; 200 ROC thresholds keep the state small.
        self.test_curves = MetricCollection({"confusion_matrix": BinaryConfusionMatrix(), "roc": BinaryROC(thresholds=200)})
        self.best_val_acc = 0.0

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids, lengths)).squeeze(-1)  # (batch,) logits

    def _embedded(self, batch: dict, perturbation: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits, and the word embeddings (time, batch, embed) they were computed from, plus `perturbation`."""
        seen = {}

        def hook(module, inputs, output):
            seen["embedded"] = output if perturbation is None else output + perturbation
            return seen["embedded"]

        handle = self.encoder.embedding.register_forward_hook(hook)
        try:
            logits = self(batch["input_ids"], batch["lengths"])
        finally:
            handle.remove()
        return logits, seen["embedded"]

    def _adversarial_loss(self, loss: torch.Tensor, embedded: torch.Tensor, batch: dict) -> torch.Tensor:
        """The loss of the batch with each review's embeddings moved the way that raises the loss most."""
        labels = batch["labels"]
        if embedded.dim() != 3 or embedded.shape[1] != len(labels):
            raise ConfigError("model.adversarial needs an encoder whose embedding output is time-major (time, batch, embed)")
        (grad,) = torch.autograd.grad(loss, embedded, retain_graph=True)  # (time, batch, embed)
        # Scaled per review relative to its own embeddings, so growing the embeddings cannot shrink the push.
        size = self.hparams.adversarial * embedded.detach().norm(dim=(0, 2))  # (batch,)
        step = grad * (size / grad.norm(dim=(0, 2)).clamp_min(1e-12))[None, :, None]  # (time, batch, embed)
        logits, _ = self._embedded(batch, step.detach())
        return F.binary_cross_entropy_with_logits(logits, labels.float())

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        labels = batch["labels"]
        adversarial = stage == "train" and self.hparams.adversarial > 0
        if adversarial:
            logits, embedded = self._embedded(batch)
        else:
            logits = self(batch["input_ids"], batch["lengths"])
        loss = F.binary_cross_entropy_with_logits(logits, labels.float())
        metrics = getattr(self, f"{stage}_metrics")
        probs = logits.detach().sigmoid()
        metrics.update(probs, labels)
        if stage == "test":
            self.test_curves.update(probs, labels)
        # Evaluation figures are averaged over all processes in multi-device runs; the torchmetrics
        # objects sync their states on compute by themselves.
        self.log(
            f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True,
            batch_size=len(labels), sync_dist=stage != "train",
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        if adversarial:
            adversarial_loss = self._adversarial_loss(loss, embedded, batch)
            self.log("train/adversarial_loss", adversarial_loss, on_step=True, on_epoch=True, batch_size=len(labels))
            loss = loss + adversarial_loss
        return loss

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

    # hp/val_acc and hp/test_acc make the TensorBoard hparams tab line runs up side by side.
    def on_fit_start(self) -> None:
        if isinstance(self.logger, TensorBoardLogger):
            self.logger.log_hyperparams(self.hparams, {"hp/val_acc": 0.0, "hp/test_acc": 0.0})

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.best_val_acc = max(self.best_val_acc, float(self.val_metrics["acc"].compute()))
            self.log("hp/val_acc", self.best_val_acc, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self.log("hp/test_acc", self.test_metrics["acc"].compute(), sync_dist=True)
        if isinstance(self.logger, TensorBoardLogger):
            for name, metric in self.test_curves.items():
                fig, _ = metric.plot()
                self.logger.experiment.add_figure(f"test/{name}", fig, self.global_step)
        self.test_curves.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self(batch["input_ids"], batch["lengths"]).sigmoid()

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        # A schedule that takes `total_steps` (torch's OneCycleLR) is sized to this run and stepped every
        # batch, so `scheduler: {class_path: torch.optim.lr_scheduler.OneCycleLR, init_args: {max_lr: ..}}`
        # needs no step count in the YAML; any other schedule is stepped once per epoch.
        if _sized_by_steps(self.scheduler):
            scheduler = self.scheduler(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        scheduler = self.scheduler(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": self.hparams.monitor}}
