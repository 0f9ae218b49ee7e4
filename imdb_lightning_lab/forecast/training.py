"""The forecaster through the same LightningCLI as the sentiment models (fit | validate | test)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from imdb_lightning.training import ExperimentCLI, make_cli
from imdb_lightning_lab.forecast.data import SeriesDataModule
from imdb_lightning_lab.forecast.regressor import SequenceRegressor

FORECAST_DEFAULTS = str(Path(__file__).with_name("defaults.yaml"))  # read after config/common.yaml


class ForecastCLI(ExperimentCLI):
    task = "forecast"
    command = "imdb-lightning forecast {}"


def forecast_cli(args: Optional[list[str]] = None, run: bool = True) -> ExperimentCLI:
    return make_cli(args, run, ForecastCLI, SequenceRegressor, SeriesDataModule, FORECAST_DEFAULTS, other_command="fit")
