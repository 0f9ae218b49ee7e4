"""One way to run an experiment: the stage's checks, then Lightning's fit, validate or test, then what it tells
its user. The commands (`fit`, `validate`, `test`, `pretrain`, `forecast`), a sweep's cells and a study's trials
all run through here."""

from __future__ import annotations

from .checks import check_data, check_monitors, check_optimizer, check_precision, check_something_to_do
from .summary import fit_summary, say, test_summary


def run_experiment(cli, stage: str, summary: bool = True, **options):
    """Run `stage` ("fit", "validate" or "test") of a built command line (training.ExperimentCLI: its trainer,
    model, data module and the checkpoint it read); `options` go to the trainer (ckpt_path, ...). A sweep runs
    without the summary, whose next steps are a lone run's."""
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    check_something_to_do(trainer, model, stage)
    check_precision(trainer)
    if stage == "fit":
        check_monitors(trainer, model)
        check_optimizer(model)
    check_data(stage, datamodule, model, cli.command_config()[1], cli.checkpoint)
    result = getattr(trainer, stage)(model, datamodule=datamodule, **options)
    if summary and stage == "fit":
        say(fit_summary, trainer, cli.task)
    elif summary and stage == "test":
        say(test_summary, trainer)
    return result
