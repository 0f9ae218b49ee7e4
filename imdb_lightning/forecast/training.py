"""The forecaster through the same LightningCLI as the sentiment models (fit | validate | test)."""

from __future__ import annotations

from typing import Optional

from ..training import CONFIG_DIR, ExperimentCLI, make_cli
from .data import SeriesDataModule
from .regressor import SequenceRegressor

FORECAST_DEFAULTS = str(CONFIG_DIR / "forecast_defaults.yaml")


class ForecastCLI(ExperimentCLI):
    task = "forecast"


def forecast_cli(args: Optional[list[str]] = None, run: bool = True) -> ExperimentCLI:
    return make_cli(args, run, ForecastCLI, SequenceRegressor, SeriesDataModule, FORECAST_DEFAULTS, other_command="fit")
