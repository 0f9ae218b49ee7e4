"""SequenceRegressor: an encoder + a linear head forecasting the next value of a series."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from imdb_lightning.models.base import TrainingModule, WeightedMean, linear_head


class SequenceRegressor(TrainingModule):
    """Predicts the next (scaled) value; metrics in the series' own units.

    Args:
        encoder: an `nn.Module` with `output_dim` reading (batch, time, features), e.g.
            `imdb_lightning.models.encoders.Recurrence` with `input_size: 1`.
        dropout: dropout on the encoder's output, before the linear head.
        optimizer: optimizer factory (default Adam, lr 1e-3).
        scheduler: LR scheduler factory, or null; one taking `total_steps` (OneCycleLR) is sized to the run.
        monitor: the metric a plateau scheduler watches.
    """

    def __init__(self, encoder: nn.Module, dropout: float = 0.0, optimizer: OptimizerCallable = torch.optim.Adam,
                 scheduler: Optional[LRSchedulerCallable] = None, monitor: str = "val/loss"):
        super().__init__(encoder, optimizer, scheduler)
        self.head = linear_head(encoder, dropout)
        self.track_metrics(MetricCollection({"mse": MeanSquaredError(), "rmse": MeanSquaredError(squared=False),
                                             "mae": MeanAbsoluteError()}))
        self.save_encoder_hyperparameters()
        self.predictions: dict[int, float] = {}  # test month -> forecast, for the report's plot
        self.train_loss = WeightedMean()  # the epoch's mean, from the deferred step losses

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(inputs, lengths)).squeeze(-1)  # (batch,)

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        forecast = self(batch["inputs"], batch["lengths"]) + batch["base"]  # (batch,) scaled level
        loss = F.mse_loss(forecast, batch["target"])
        span = batch["high"] - batch["low"]
        level = forecast.detach() * span + batch["low"]  # back to the series' units
        actual = batch["target"] * span + batch["low"]
        if stage == "train":  # read with the next logged step (TrainingModule.defer)
            self.defer(loss, len(forecast), level, actual)
            return loss
        getattr(self, f"{stage}_metrics").update(level, actual)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=len(forecast))
        if stage == "test":
            self.predictions.update(zip(batch["month"].tolist(), level.tolist()))
        return loss
