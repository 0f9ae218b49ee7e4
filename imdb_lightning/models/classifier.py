"""SentimentClassifier: any text encoder + a linear head, trained with one shared step."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torchmetrics import CatMetric, MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryConfusionMatrix, BinaryF1Score, BinaryROC

from ..errors import ConfigError
from ..pretrained import load_pretrained, resolve
from ..runs import digest, write_val_reviews
from ..standard_error import clustered_standard_error
from . import hparams as tab
from .adversarial import adversarial_loss
from .base import NonFiniteLossError, TrainingModule, WeightedMean, linear_head, plateau  # noqa: F401  (NonFiniteLossError: part of this API)
from .encoders import layer_groups
from .finetuning import FineTuningCollapsed, check_collapse, check_lr_decay, discriminative_groups, unfreeze  # noqa: F401


class SentimentClassifier(TrainingModule):
    """Binary sentiment classifier: encoder -> dropout -> linear head.

    Args:
        encoder: an `nn.Module` with `output_dim`, called as encoder(input_ids, lengths).
        dropout: dropout on the encoder's output, before the linear head.
        optimizer: optimizer factory (default Adam, lr 1e-3).
        scheduler: LR scheduler factory (default `plateau`, stepped on `monitor`); null for none.
        monitor: the metric a plateau scheduler watches.
        adversarial: > 0 adds adversarial training on the word embeddings (Miyato et al. 2017): each
            training review is also scored with its embeddings pushed along the loss gradient by this
            fraction of their own L2 norm, and that loss is added. Needs an encoder with `embed` and `encode`.
        pretrained: a language model checkpoint (`imdb-lightning pretrain`): the encoder starts from its
            embedding and recurrent weights, and the data module uses its vocabulary. A fine-tuning run
            whose validation predictions all fall on one side (from its second epoch on) stops, saying so.
        pretrained_layers: what the encoder takes from `pretrained`: `all` (its embedding and recurrent layers:
            the same cell and sizes, one direction), `forward` (the same, into the forward direction of a
            one-layer bidirectional encoder; its backward direction starts fresh) or `embedding` (the word
            vectors alone, for any encoder with an embedding of their width: another cell, a bag of words).
        lr_decay: per-layer learning rates (ULMFiT's discriminative fine-tuning): the head learns at the
            optimizer's rate, each layer group below it (recurrent layers top down, then the embedding)
            at the rate of the one above divided by this (ULMFiT: 2.6). 1: one rate for all.
        gradual_unfreezing: train only the head in the first epoch, and one more layer group, top down,
            in each epoch after (ULMFiT); the embedding last.
    """

    def __init__(
        self,
        encoder: nn.Module,
        dropout: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: Optional[LRSchedulerCallable] = plateau,
        monitor: str = "val/loss",
        adversarial: float = 0.0,
        pretrained: Optional[str] = None,
        pretrained_layers: Literal["all", "forward", "embedding"] = "all",
        lr_decay: float = 1.0,
        gradual_unfreezing: bool = False,
    ):
        super().__init__(encoder, optimizer, scheduler)
        self.head = linear_head(encoder, dropout)
        # Inputs come from _step (probabilities, 0/1 labels): checking them would cost a host sync per step on a GPU.
        self.track_metrics(MetricCollection({"acc": BinaryAccuracy(validate_args=False), "f1": BinaryF1Score(validate_args=False),
                                             "auroc": BinaryAUROC(validate_args=False)}))
        if pretrained_layers not in ("all", "forward", "embedding"):
            raise ConfigError(f"model.pretrained_layers must be all, forward or embedding, got {pretrained_layers!r}")
        if pretrained:  # the weights of `imdb-lightning pretrain`; a resumed fit's checkpoint replaces them after
            load_pretrained(encoder, resolve(pretrained), pretrained_layers)
        if adversarial < 0:
            raise ConfigError(f"model.adversarial must be 0 (off) or positive, got {adversarial}")
        if adversarial and not (hasattr(encoder, "embed") and hasattr(encoder, "encode")):
            raise ConfigError(f"model.adversarial perturbs word embeddings; {type(encoder).__name__} has no embed/encode")
        check_lr_decay(lr_decay)
        self.save_encoder_hyperparameters()
        # Epoch means of the training losses, persistent like the training metrics (see track_metrics).
        # (no host sync per step to look for NaNs: training_step stops on a non-finite loss)
        self.train_loss, self.train_adversarial_loss = WeightedMean(), WeightedMean()
        self.train_loss.persistent(True)
        self.train_adversarial_loss.persistent(True)
        # Each review's outcome, film, place in its split and P(positive): the film-clustered error of the
        # accuracy, and the best epoch's outcomes saved beside run.json for paired comparisons.
        self.val_outcomes, self.test_outcomes = CatMetric(), CatMetric()
        # Test-time pictures for TensorBoard; 200 ROC thresholds keep the state small.
        self.test_curves = MetricCollection({"confusion_matrix": BinaryConfusionMatrix(), "roc": BinaryROC(thresholds=200)})
        # Evaluation losses, averaged over each epoch's reviews and logged with the other epoch figures
        self.val_loss, self.test_loss = WeightedMean(), WeightedMean()
        self.val_positive = MeanMetric()  # share of validation reviews predicted positive: a collapse shows there
        self.register_buffer("best_val_acc", torch.tensor(0.0))  # in checkpoints: hp/val_acc survives a resume
        self._unfrozen_in: Optional[int] = None  # the epoch gradual unfreezing last set the layers for
        self._said_undefined: set[str] = set()

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The parameters from the head down: head, recurrent layers top down, embedding tables."""
        return [list(self.head.parameters()), *reversed(layer_groups(self.encoder))]

    def parameter_groups(self):
        if self.hparams.lr_decay == 1:
            return self.parameters()
        return discriminative_groups(self.layer_groups(), self.hparams.lr_decay)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        super().on_train_batch_start(batch, batch_idx)
        # From the epoch number alone, so a run resumed mid-epoch (Lightning calls no epoch-start hook
        # then) freezes the same layers.
        if self.hparams.gradual_unfreezing and self._unfrozen_in != self.current_epoch:
            unfreeze(self.layer_groups(), self.current_epoch)
            self._unfrozen_in = self.current_epoch

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(inputs, lengths)).squeeze(-1)  # (batch,)

    def metric_names(self) -> set[str]:
        return super().metric_names() | {"val/acc_se", "hp/val_acc"}

    def undefined_metrics(self, stage: str) -> set[str]:
        # AUROC ranks positives against negatives: with one class only it is undefined (torchmetrics
        # would report 0.0). Said once per run; the other figures stay.
        auroc = getattr(self, f"{stage}_metrics")["auroc"]
        targets = auroc.target if isinstance(auroc.target, torch.Tensor) else torch.cat(auroc.target) if auroc.target else None
        if targets is None or targets.unique().numel() > 1:
            return set()
        if stage not in self._said_undefined:
            side = "positive" if int(targets[0]) == 1 else "negative"
            print(f"imdb-lightning: {stage}/auroc is undefined and left out: every {stage} review is {side}", file=sys.stderr)
            self._said_undefined.add(stage)
        return {f"{stage}/auroc"}

    def _logits(self, batch: dict, perturbation: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (batch,), and the word embeddings (time, batch, embed) they were computed from."""
        ids, lengths = batch["input_ids"], batch["lengths"]
        embedded = self.encoder.embed(ids)
        if perturbation is None and self.training and self.hparams.adversarial and not embedded.requires_grad:
            embedded.requires_grad_()  # a frozen embedding (gradual unfreezing): the adversary still needs its gradient
        inputs = embedded if perturbation is None else embedded + perturbation
        return self.head(self.encoder.encode(inputs, lengths, ids)).squeeze(-1), embedded

    def _adversarial_loss(self, loss: torch.Tensor, embedded: torch.Tensor, batch: dict) -> torch.Tensor:
        ids, lengths = batch["input_ids"], batch["lengths"]
        return adversarial_loss(lambda inputs: self.head(self.encoder.encode(inputs, lengths, ids)).squeeze(-1),
                                loss, embedded, batch["labels"], self.hparams.adversarial)

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        labels = batch["labels"]
        adversarial = stage == "train" and self.hparams.adversarial > 0
        if adversarial:
            logits, embedded = self._logits(batch)
        else:
            logits = self(batch["input_ids"], batch["lengths"])
        loss = F.binary_cross_entropy_with_logits(logits, labels.float())
        probs = logits.detach().sigmoid()
        if stage != "train":
            self._evaluate(stage, batch, loss, probs)
            return loss
        # The step's figures stay on the device until the next logged step reads them (TrainingModule.defer).
        if not adversarial:
            self.defer(loss, len(labels), probs, labels)
            return loss
        adversarial_loss = self._adversarial_loss(loss, embedded, batch)
        self.defer(loss, len(labels), probs, labels, adversarial_loss=adversarial_loss.detach())
        return loss + adversarial_loss

    def _evaluate(self, stage: str, batch: dict, loss: torch.Tensor, probs: torch.Tensor) -> None:
        # Evaluation figures are averaged over all processes in multi-device runs; the torchmetrics
        # objects sync their states on compute by themselves.
        labels = batch["labels"]
        getattr(self, f"{stage}_metrics").update(probs, labels)
        getattr(self, f"{stage}_loss").update(loss.detach(), len(labels))
        if stage == "val":
            self.val_positive.update((probs >= 0.5).float())
        if "groups" in batch:
            correct = ((probs >= 0.5).long() == labels).float()
            index = batch["index"].float() if "index" in batch else torch.full_like(correct, -1.0)
            rows = torch.stack([correct, batch["groups"].float(), index, probs.float()], dim=-1)  # (batch, 4)
            getattr(self, f"{stage}_outcomes").update(rows)
        if stage == "test":
            self.test_curves.update(probs, labels)

    def consume(self, weights: torch.Tensor, figures: dict[str, torch.Tensor]) -> None:
        if "adversarial_loss" in figures:
            self.train_adversarial_loss.update(figures["adversarial_loss"], weights)

    def epoch_losses(self, stage: str) -> dict:
        extra = {"train/adversarial_loss_epoch": self.train_adversarial_loss} if stage == "train" else {}
        return {**super().epoch_losses(stage), **extra}

    def _log_clustered_error(self, stage: str) -> tuple[Optional[float], Optional[np.ndarray]]:
        """`{stage}/acc_se`: the standard error of the accuracy when reviews of one film are correlated.
        Returns it and the epoch's outcomes (reviews, [correct, film, index, prob]), or Nones."""
        outcomes, se, values = getattr(self, f"{stage}_outcomes"), None, None
        if outcomes.update_count:
            values = outcomes.compute().reshape(-1, 4).cpu().numpy()  # (reviews, [correct, film, index, prob])
            se = clustered_standard_error(values[:, 0], values[:, 1])
            self.log(f"{stage}/acc_se", se, sync_dist=False)
        outcomes.reset()
        return se, values

    def _save_val_reviews(self, values) -> None:
        """The epoch's per-review outcomes as the run's val_reviews.npz (every process calls this: log_dir is collective)."""
        split_key = getattr(self.trainer.datamodule, "split_key", None)
        if values is None or self.trainer.logger is None or split_key is None or (values[:, 2] < 0).any():
            return
        folder = self.trainer.log_dir
        if self.trainer.is_global_zero and folder:
            correct, probs = values[:, 0], values[:, 3]
            labels = (correct == (probs >= 0.5)).astype(int)  # right and predicted positive, or wrong and predicted negative
            write_val_reviews(folder, values[:, 2], values[:, 1], labels, probs, digest(split_key()), self.current_epoch)

    # TensorBoard's HParams tab (models/hparams.py): the run's row, written once the data are loaded (the
    # validation kind is known then) and the optimizer built, and again on a resume (its settings may differ).
    def on_train_start(self) -> None:
        super().on_train_start()
        # (only rank 0 has a real TensorBoard writer; the others hold a stand-in)
        if isinstance(self.logger, TensorBoardLogger) and self.trainer.is_global_zero:
            tab.start_session(Path(self.logger.log_dir), tab.session_values(self, self.trainer))

    def on_fit_end(self) -> None:
        super().on_fit_end()
        if isinstance(self.logger, TensorBoardLogger) and self.trainer.is_global_zero:
            tab.end_session(Path(self.logger.log_dir), self.global_step)

    def on_validation_epoch_end(self) -> None:
        values = self.log_epoch_metrics("val")
        se, outcomes = self._log_clustered_error("val")
        positive = float(self.val_positive.compute()) if self.val_positive.update_count else 0.5
        self.val_positive.reset()
        if self.hparams.pretrained and not self.trainer.sanity_checking:
            check_collapse(positive, self.current_epoch)
        if not self.trainer.sanity_checking and values:
            # a strictly better epoch, as the best-val/acc checkpoint counts it: its outcomes and error are the run's
            if float(values["val/acc"]) > float(self.best_val_acc) and se is not None:
                self.log("hp/val_acc_se", se, sync_dist=False)
            if float(values["val/acc"]) > float(self.best_val_acc) or self.trainer.state.fn == "validate":
                self._save_val_reviews(outcomes)
            self.best_val_acc.fill_(max(float(self.best_val_acc), float(values["val/acc"])))
            self.log("hp/val_acc", self.best_val_acc, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        values = self.log_epoch_metrics("test")
        self._log_clustered_error("test")
        if values:
            self.log("hp/test_acc", values["test/acc"], sync_dist=True)
            # a test of another run's best checkpoint: the figure goes to that run's HParams row too
            fit = tab.tested_session(self.trainer.ckpt_path, getattr(self.logger, "log_dir", None))
            if fit is not None and self.trainer.is_global_zero:
                tab.add_test_accuracy(fit, float(values["test/acc"]), self.global_step)
        if isinstance(self.logger, TensorBoardLogger):
            for name, metric in self.test_curves.items():
                fig, _ = metric.plot()  # every process: computing the curve gathers their states
                if self.trainer.is_global_zero:
                    self.logger.experiment.add_figure(f"test/{name}", fig, self.global_step)
        self.test_curves.reset()

