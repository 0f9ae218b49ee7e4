"""The TensorBoard hparams tab: each run's settings beside its hp/ metrics, so runs line up side by side."""

from __future__ import annotations

from lightning.pytorch.loggers import TensorBoardLogger

HP_METRICS = {"hp/val_acc": "best validation accuracy so far", "hp/test_acc": "test accuracy"}


def validation_kind(trainer) -> str:
    validation = getattr(trainer.datamodule, "validation", None) or {}
    return validation.get("kind", "unknown")


def declare_hp_metrics(logger: TensorBoardLogger, params: dict) -> None:
    """Write the hparams (and hparams.yaml) with the hp/ metrics as columns, without logging any value
    for them: a run that is never tested then shows no test accuracy rather than 0."""
    from torch.utils.tensorboard.summary import hparams

    logger.log_hyperparams(params)  # hparams.yaml; with default_hp_metric off, no summary yet
    writer = logger.experiment.file_writer
    for summary in hparams(flat_params(params), {name: 0.0 for name in HP_METRICS}):
        writer.add_summary(summary)


def flat_params(tree: dict, prefix: str = "") -> dict:
    """Nested hyperparameters as TensorBoard takes them: `encoder/init_args/cell: gru`, plain values only."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flat_params(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat
