"""`imdb-lightning forecast fit | validate | test | report`: the airline-passengers forecaster.

Same encoders, configs and conventions as the sentiment models (experiments/airline_lstm.yaml).
"""

from __future__ import annotations

from .report import report_main
from .training import forecast_cli


def main(argv: list[str]) -> None:
    if argv[:1] == ["report"]:
        report_main(argv[1:])
    else:
        forecast_cli(argv)
