"""What a finished command tells its user: how well the model did, where it is, what to run next."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

SPLITS = {"grouped": "film-grouped validation (films unseen in training)",
          "random": "random validation (a split by review: on IMDB it shares films with training and reads high)"}


def run_folder(trainer) -> Optional[Path]:
    # the logger's own folder: trainer.log_dir would be a collective call under DDP, and after a fit the
    # other processes may already have left it
    folder = getattr(trainer.logger, "log_dir", None) if trainer.logger is not None else None
    return Path(folder) if folder else None


def _interval(se: Optional[float]) -> str:
    return f" ± {1.96 * se:.4f}" if se is not None and se == se else ""


def _figure(metrics: dict, name: str) -> Optional[float]:
    value = metrics.get(name)
    return float(value) if value is not None else None


def fit_summary(trainer, task: str = "sentiment") -> str:
    saver = trainer.checkpoint_callback
    best = getattr(saver, "best_model_path", "") or ""
    score = getattr(saver, "best_model_score", None)
    run = run_folder(trainer)
    validation = getattr(trainer.datamodule, "validation", None) or {}
    lines = []
    if task == "language_model":
        if score is not None:
            lines.append(f"Done: best validation loss {float(score):.4f} (perplexity {2.718281828 ** float(score):.1f})")
    elif task == "forecast":
        if score is not None:
            lines.append(f"Done: best {saver.monitor} {float(score):.4f} (in the series' own units)")
    elif score is not None:
        kind = SPLITS.get(validation.get("kind"), "validation")
        size = f", {validation['reviews']:,} reviews" if validation.get("reviews") else ""
        films = f" of {validation['films']:,} films" if validation.get("films") else ""
        se = _figure(trainer.callback_metrics, "val/acc_se")
        interval = f"{_interval(se)} (95%, from the last epoch's film-clustered standard error)" if se is not None else ""
        lines.append(f"Done: best val/acc {float(score):.4f}{interval} on {kind}{size}{films}")
    if run is not None:
        lines.append(f"  run folder:      {run}")
    if best:
        lines.append(f"  best checkpoint: {best}")
    if not best:
        return "\n".join(lines)
    lines.append("Next:")
    if task == "language_model":
        # the shipped fine-tune recipe of the language model's own cell (rnn and lstm have one)
        encoder = getattr(trainer.lightning_module, "encoder", None)
        cell = getattr(encoder, "cell", "lstm")
        backward = getattr(encoder, "reverse", False)
        recipe = f"experiments/pretrain/finetune_{cell if cell in ('rnn', 'lstm') else 'lstm'}.yaml"
        if backward:
            recipe = "experiments/pretrain/finetune_lstm_backward.yaml"
        note = "" if cell in ("rnn", "lstm") else f"   (set its encoder to your {cell} LM's cell and sizes)"
        note += "   (add --model.encoder.init_args.cell rnn for a SimpleRNN)" if backward and cell == "rnn" else ""
        lines.append(f"  imdb-lightning fit --config {recipe} --model.pretrained {best}{note}")
    elif task == "forecast":
        config = f" --config {run / 'config.yaml'}" if run is not None else ""
        lines.append(f"  imdb-lightning forecast test{config} --ckpt_path {best}")
    else:
        config = f" --config {run / 'config.yaml'}" if run is not None else ""
        lines.append(f"  imdb-lightning test{config} --ckpt_path {best}   (its data settings come from the checkpoint; "
                     "--data.source files --data.test_files FILE: your own test reviews)")
        lines.append(f"  imdb-lightning predict --ckpt_path {best} \"a wonderful film\"")
    lines += dashboard(trainer.logger, run)
    return "\n".join(lines)


def dashboard(logger, run: Optional[Path]) -> list[str]:
    """Where to watch the run: the dashboard of the logger it used (none without one)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if run is None:
        return []
    if isinstance(logger, TensorBoardLogger):
        return [f"  tensorboard --logdir {run.parent.parent}"]
    if isinstance(logger, CSVLogger):
        return [f"  metrics per step and epoch: {run / 'metrics.csv'}"]
    return []


def test_summary(trainer) -> str:
    metrics = trainer.callback_metrics
    acc = _figure(metrics, "test/acc")
    if acc is None:
        return ""
    se = _figure(metrics, "test/acc_se")
    run = run_folder(trainer)
    where = f"; recorded in {run / 'run.json'}" if run is not None else ""
    reviews = getattr(trainer.datamodule, "reviews", None)
    films = callable(reviews) and reviews("test").groups is not None  # (read already: the test just ran on them)
    clusters = "films as clusters" if films else "the test reviews name no films"
    return f"Done: test/acc {acc:.4f}{_interval(se)} (95% interval, {clusters}){where}"


def say(summary, trainer, *args) -> None:
    """Print `summary(trainer, *args)` on the first process only (the others never compute it)."""
    if trainer.is_global_zero:
        text = summary(trainer, *args)
        if text:
            print(text, file=sys.stderr, flush=True)
