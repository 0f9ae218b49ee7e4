"""`imdb-lightning forecast fit | validate | test | report`: the airline-passengers forecaster.

Same encoders, configs and conventions as the sentiment models (experiments/airline_lstm.yaml).
"""

from __future__ import annotations

from imdb_lightning.errors import UserError
from imdb_lightning_lab.forecast.report import report_main
from imdb_lightning_lab.forecast.training import forecast_cli

SUBCOMMANDS = {
    "fit": "train the forecaster (LightningCLI: --config experiments/airline_lstm.yaml)",
    "validate": "evaluate a checkpoint on the validation months",
    "test": "evaluate a checkpoint on the test months",
    "report": "fit and test over seeds, against the seasonal-naive forecast, with a plot",
}


def overview() -> str:
    lines = [f"  {name:<8}  {about}" for name, about in SUBCOMMANDS.items()]
    return ("usage: imdb-lightning forecast SUBCOMMAND [options]   (imdb-lightning forecast SUBCOMMAND --help for its "
            "options)\n\nThe airline-passengers LSTM.\n\nsubcommands:\n" + "\n".join(lines))


def main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(overview())
        return
    if not argv or argv[0] not in SUBCOMMANDS:
        given = f"got {argv[0]!r}" if argv else "none given"
        raise UserError(f"imdb-lightning forecast needs a subcommand: {', '.join(SUBCOMMANDS)} ({given}); "
                        "e.g. imdb-lightning forecast fit --config experiments/airline_lstm.yaml")
    if argv[:1] == ["report"]:
        report_main(argv[1:])
    else:
        forecast_cli(argv)
