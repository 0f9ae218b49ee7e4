"""Monthly series as windows of past values -> the next value, split in time order.

The airline-passengers series (Jan 1949 - Dec 1960, Box & Jenkins) ships with the package.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Optional

import lightning as L
import numpy as np
import torch

from imdb_lightning.data.batching import BucketBatchSampler, ResumableLoader
from imdb_lightning.errors import ConfigError, DataError
from imdb_lightning.resume import train_position, training_progress

AIRLINE = Path(__file__).with_name("resources") / "airline_passengers.csv"


MONTH = re.compile(r"^\s*(\d{4})[-/](\d{1,2})(?:[-/]\d{1,2})?\s*$")  # 1949-01, 1949/1, 1949-01-31


def read_series(path: Path, column: str) -> tuple[list[str], np.ndarray]:
    """(months, values) of a monthly CSV, in date order: its first column names each row's month
    (YYYY-MM); a missing or repeated month is an error, as is a missing value."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows or column not in rows[0]:
        raise DataError(f"{path}: no column {column!r}; columns found: {', '.join(rows[0]) if rows else 'none'}")
    month_column = next(iter(rows[0]))
    values = []
    for number, row in enumerate(rows, start=2):  # line numbers of the file (line 1: the header)
        try:
            value = float(row[column])
        except (TypeError, ValueError):
            raise DataError(f"{path}: line {number}: column {column!r} holds {row[column]!r}, not a number") from None
        if not np.isfinite(value):
            raise DataError(f"{path}: line {number}: column {column!r} holds {row[column]!r}; fill or drop that month")
        values.append(value)
    if month_column == column:  # a file of values alone: consecutive months by position
        return [str(i) for i in range(len(rows))], np.array(values, dtype=np.float32)
    months = []
    for number, row in enumerate(rows, start=2):
        match = MONTH.match(row[month_column] or "")
        if not match or not 1 <= int(match.group(2)) <= 12:
            raise DataError(f"{path}: line {number}: column {month_column!r} holds {row[month_column]!r}, not a month (YYYY-MM)")
        months.append(int(match.group(1)) * 12 + int(match.group(2)) - 1)
    order = np.argsort(months, kind="stable")  # date order, whatever the file's
    months, values = np.array(months)[order], np.array(values, dtype=np.float32)[order]
    name = lambda m: f"{m // 12}-{m % 12 + 1:02d}"  # noqa: E731
    steps = np.diff(months)
    if (steps == 0).any():
        raise DataError(f"{path}: month {name(months[1:][steps == 0][0])} appears twice in column {month_column!r}")
    if (steps > 1).any():
        gap = int(np.argmax(steps > 1))
        raise DataError(f"{path}: no row for {name(months[gap] + 1)} (column {month_column!r} goes from {name(months[gap])} "
                        f"to {name(months[gap + 1])}); the series needs every month")
    return [name(m) for m in months], values


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
        self._resume_at: Optional[dict] = None  # a checkpoint's train_position, for the next training loader

    def setup(self, stage: str) -> None:
        hp = self.hparams
        self.months, values = read_series(Path(hp.csv_file or AIRLINE), hp.column)
        first_val = len(values) - hp.test_months - hp.val_months
        if first_val <= hp.window:
            held_out = hp.val_months + hp.test_months
            raise DataError(f"{len(values)} values are too few for window {hp.window} and {held_out} held-out months")
        self.low, self.high = float(values[:first_val].min()), float(values[:first_val].max())  # training months only
        if self.high == self.low:
            raise DataError(f"{hp.csv_file or AIRLINE}: column {hp.column!r} is constant ({self.low:g}) over the training "
                            "months: there is nothing to learn, and min-max scaling needs two different values")
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
        # As the sentiment data's loader (imdb_lightning/data/datamodule.py), so a fit resumes exactly: the order
        # is a plain shuffle of the windows (pool 0) fixed by (the run's seed, epoch), not drawn from the global
        # generator, and a mid-epoch resume skips the batches already trained.
        data, trainer, seed = self.splits[split], getattr(self, "trainer", None), torch.initial_seed()
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        order = torch.utils.data.DistributedSampler(data, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=seed)
        batches = BucketBatchSampler(order, np.ones(len(data)), self.hparams.batch_size, pool=0)
        progress = (lambda: training_progress(trainer)) if trainer else (lambda: (0, 0))
        # its own generator: creating an iterator would otherwise draw from the global one (dropout's)
        loader = ResumableLoader(data, batches, progress, collate_fn=self.collate, generator=torch.Generator().manual_seed(seed))
        if shuffle and self._resume_at is not None:
            loader.load_state_dict(self._resume_at)
            self._resume_at = None
        return loader

    # The training data's position travels in the checkpoint (resume.train_position), restored before
    # Lightning asks for the training data.
    def state_dict(self) -> dict:
        return train_position(self)

    def load_state_dict(self, state: dict) -> None:
        self._resume_at = state.get("train_position")

    def collate(self, rows) -> dict:
        inputs, targets, months = map(torch.stack, zip(*rows))
        base = inputs[:, -12, 0] if self.hparams.seasonal_base else torch.zeros(len(rows))  # same month last year
        return {
            "inputs": inputs,  # (batch, window, 1) scaled values
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


