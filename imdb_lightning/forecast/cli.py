"""`imdb-lightning forecast fit | validate | test | report`: the airline-passengers forecaster.

Same encoders, configs and conventions as the sentiment models (experiments/airline_lstm.yaml).
"""

from __future__ import annotations

from ..errors import UserError
from .report import report_main
from .training import forecast_cli

SUBCOMMANDS = ("fit", "validate", "test", "report")


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help"):
        given = f"got {argv[0]!r}" if argv else "none given"
        raise UserError(f"imdb-lightning forecast needs a subcommand: {', '.join(SUBCOMMANDS)} ({given}); "
                        "e.g. imdb-lightning forecast fit --config experiments/airline_lstm.yaml")
    if argv[:1] == ["report"]:
        report_main(argv[1:])
    else:
        forecast_cli(argv)
