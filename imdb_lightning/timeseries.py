"""The tutorials' other classic: monthly airline passengers, forecast one month ahead by an LSTM.

Same encoders, configs and CLI as the sentiment models: `imdb-lightning forecast fit|test
--config experiments/airline_lstm.yaml`, and `imdb-lightning forecast report` for the test RMSE
over seeds against a seasonal-naive forecast (same month last year), with a plot.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Optional

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from .encoders import encoder_spec
from .errors import ConfigError, DataError

AIRLINE = Path(__file__).with_name("resources") / "airline_passengers.csv"


def read_series(path: Path, column: str) -> tuple[list[str], np.ndarray]:
    import csv

    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or column not in rows[0]:
        raise DataError(f"{path}: no column {column!r}; columns found: {', '.join(rows[0]) if rows else 'none'}")
    try:
        values = np.array([float(r[column]) for r in rows], dtype=np.float32)
    except ValueError as err:
        raise DataError(f"{path}: column {column!r} holds a non-number: {err}") from err
    return [next(iter(r.values())) for r in rows], values


class SeriesDataModule(L.LightningDataModule):
    """Windows of `window` past values -> the next value, split in time order.

    The last `test_months` targets are the test split, the `val_months` before them validation,
    the rest training. Min-max scaling is fitted on the values the training windows see, only.

    Args:
        csv_file: a CSV with one row per time step (default: the packaged airline series, 1949-1960).
        column: the column to forecast.
        window: past values per input.
        val_months: validation targets.
        test_months: test targets, the last ones.
        batch_size: windows per batch.
        seasonal_base: forecast the change from the same month a year earlier (the window's first
            value when window is 12) instead of the level: the trend then stays in range of the scaling.
    """

    def __init__(self, csv_file: Optional[str] = None, column: str = "Passengers", window: int = 12,
                 val_months: int = 12, test_months: int = 24, batch_size: int = 8, seasonal_base: bool = False):
        super().__init__()
        for name, value in dict(window=window, val_months=val_months, test_months=test_months, batch_size=batch_size).items():
            if value < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {value}")
        if seasonal_base and window < 12:
            raise ConfigError(f"data.seasonal_base needs data.window >= 12 (the same month last year), got {window}")
        self.save_hyperparameters()
        self.splits: dict[str, torch.utils.data.TensorDataset] = {}

    def setup(self, stage: str) -> None:
        hp = self.hparams
        self.months, values = read_series(Path(hp.csv_file or AIRLINE), hp.column)
        first_val = len(values) - hp.test_months - hp.val_months
        if first_val <= hp.window:
            raise DataError(f"{len(values)} values are too few for window {hp.window} and {hp.val_months + hp.test_months} held-out months")
        self.low, self.high = float(values[:first_val].min()), float(values[:first_val].max())  # training months only
        scaled = (values - self.low) / (self.high - self.low)
        targets = np.arange(hp.window, len(values))
        bounds = {"train": (hp.window, first_val), "val": (first_val, first_val + hp.val_months),
                  "test": (first_val + hp.val_months, len(values))}
        for split, (start, stop) in bounds.items():
            t = targets[(targets >= start) & (targets < stop)]
            inputs = np.stack([scaled[i - hp.window : i] for i in t])[..., None]  # (n, window, 1)
            self.splits[split] = torch.utils.data.TensorDataset(
                torch.from_numpy(inputs), torch.from_numpy(scaled[t]), torch.from_numpy(t)
            )
        self.values = values

    def _loader(self, split: str, shuffle: bool):
        return torch.utils.data.DataLoader(self.splits[split], batch_size=self.hparams.batch_size, shuffle=shuffle,
                                           collate_fn=self.collate)

    def collate(self, rows) -> dict:
        inputs, targets, months = map(torch.stack, zip(*rows))
        base = inputs[:, -12, 0] if self.hparams.seasonal_base else torch.zeros(len(rows))  # same month last year
        return {
            "input_ids": inputs,  # (batch, window, 1) scaled values; named as for text so encoders read both
            "lengths": torch.full((len(rows),), inputs.shape[1], dtype=torch.long),
            "target": targets, "month": months, "base": base,
            "low": torch.full((len(rows),), self.low), "high": torch.full((len(rows),), self.high),
        }

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)

    def seasonal_naive_rmse(self) -> float:
        """RMSE of predicting each test month by the same month a year earlier."""
        months = self.splits["test"].tensors[2].numpy()
        return float(np.sqrt(np.mean((self.values[months] - self.values[months - 12]) ** 2)))


class SequenceRegressor(L.LightningModule):
    """An encoder + a linear head predicting the next (scaled) value; metrics in the series' own units.

    Args:
        encoder: an `nn.Module` with `output_dim` (RecurrentEncoder with input_size: 1).
        optimizer: optimizer factory (default Adam, lr 1e-3).
        scheduler: LR scheduler factory, or null.
    """

    def __init__(self, encoder: nn.Module, optimizer: OptimizerCallable = torch.optim.Adam,
                 scheduler: Optional[LRSchedulerCallable] = None):
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(encoder.output_dim, 1)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.save_hyperparameters(ignore=["encoder", "optimizer", "scheduler"])
        self.hparams["encoder"] = encoder_spec(encoder)
        metrics = MetricCollection({"mse": MeanSquaredError(), "rmse": MeanSquaredError(squared=False), "mae": MeanAbsoluteError()})
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_metrics", metrics.clone(prefix=f"{stage}/"))
        self.predictions: dict[int, float] = {}  # test month -> forecast, for the report's plot

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(inputs, lengths)).squeeze(-1)  # (batch,) scaled forecast (or change)

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        forecast = self(batch["input_ids"], batch["lengths"]) + batch["base"]  # (batch,) scaled level
        loss = F.mse_loss(forecast, batch["target"])
        span = batch["high"] - batch["low"]
        passengers = forecast.detach() * span + batch["low"]  # back to the series' units
        getattr(self, f"{stage}_metrics").update(passengers, batch["target"] * span + batch["low"])
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=len(forecast))
        self.log_dict(getattr(self, f"{stage}_metrics"), on_step=False, on_epoch=True, prog_bar=stage == "val")
        if stage == "test":
            self.predictions.update(zip(batch["month"].tolist(), passengers.tolist()))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "monitor": "val/loss"}}


def report(config: str, seeds: list[int], out: Path) -> dict:
    """Fit and test once per seed; compare the test RMSE with the seasonal-naive forecast; plot."""
    from .cli import forecast_cli

    results, curves = [], []
    for seed in seeds:
        cli = forecast_cli(["--config", config, "--seed_everything", str(seed), "--trainer.enable_progress_bar", "false",
                            "--trainer.logger.init_args.name", f"airline_seed{seed}"], run=False)
        cli.trainer.fit(cli.model, cli.datamodule)
        tested = cli.trainer.test(cli.model, cli.datamodule, ckpt_path="best", verbose=False)[0]
        results.append({"seed": seed, "rmse": tested["test/rmse"], "mae": tested["test/mae"], "mse": tested["test/mse"]})
        curves.append(dict(cli.model.predictions))
    dm = cli.datamodule
    naive = dm.seasonal_naive_rmse()
    summary = {
        "seeds": results, "lstm_rmse_mean": statistics.fmean(r["rmse"] for r in results),
        "lstm_rmse_std": statistics.stdev(r["rmse"] for r in results) if len(results) > 1 else 0.0,
        "seasonal_naive_rmse": naive, "test_months": [dm.months[m] for m in sorted(curves[0])],
    }
    summary["beats_seasonal_naive_every_seed"] = all(r["rmse"] < naive for r in results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "airline.json").write_text(json.dumps(summary, indent=2))
    plot(dm, curves, out / "airline.png")
    return summary


def plot(dm: SeriesDataModule, curves: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    months = sorted(curves[0])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(range(len(dm.values)), dm.values, color="black", label="actual")
    forecasts = np.array([[c[m] for m in months] for c in curves])  # (seeds, months)
    ax.plot(months, forecasts.mean(0), color="tab:red", label=f"LSTM forecast (mean of {len(curves)} seeds)")
    ax.fill_between(months, forecasts.min(0), forecasts.max(0), color="tab:red", alpha=0.2)
    ax.plot(months, dm.values[np.array(months) - 12], color="tab:blue", linestyle="--", label="seasonal naive (last year)")
    ticks = list(range(0, len(dm.values), 12))
    ax.set_xticks(ticks, [dm.months[t][:4] for t in ticks])
    ax.set(ylabel=dm.hparams.column, title="Airline passengers: one-month-ahead forecasts over the test months")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="imdb-lightning forecast report", description="Test RMSE over seeds vs seasonal naive.")
    parser.add_argument("--config", default="experiments/airline_lstm.yaml")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="airline")
    opts = parser.parse_args(argv)
    summary = report(opts.config, [int(s) for s in opts.seeds.split(",")], Path(opts.out))
    rmses = ", ".join(f"{r['rmse']:.1f}" for r in summary["seeds"])
    print(f"LSTM test RMSE {summary['lstm_rmse_mean']:.1f} ± {summary['lstm_rmse_std']:.1f} (seeds: {rmses}); "
          f"seasonal naive {summary['seasonal_naive_rmse']:.1f}; wrote {opts.out}/airline.json and airline.png")
    return summary
