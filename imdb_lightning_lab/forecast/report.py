"""`imdb-lightning forecast report`: test RMSE over seeds against a seasonal-naive forecast, with a plot."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from imdb_lightning.arguments import ArgumentParser, comma_list
from imdb_lightning.experiment import run_experiment
from imdb_lightning.tools.compare import pyplot
from imdb_lightning_lab.forecast.data import SeriesDataModule
from imdb_lightning_lab.forecast.training import forecast_cli

RECIPE = Path(__file__).with_name("resources") / "airline_lstm.yaml"


def report(config: str, seeds: list[int], out: Path) -> dict:
    """Fit and test once per seed; compare the test RMSE with the seasonal-naive forecast; plot."""
    results, curves = [], []
    for seed in seeds:
        cli = forecast_cli(["--config", config, "--seed_everything", str(seed), "--trainer.enable_progress_bar", "false",
                            "--trainer.logger.init_args.name", f"airline_seed{seed}"], run=False)
        run_experiment(cli, "fit", summary=False)
        tested = run_experiment(cli, "test", summary=False, ckpt_path="best", verbose=False)[0]
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
    plt = pyplot()
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
    parser = ArgumentParser(prog="imdb-lightning forecast report", description="Test RMSE over seeds vs seasonal naive.")
    parser.add_argument("--config", default=str(RECIPE),
                        help="the forecaster's YAML (default: the airline recipe shipped with the package, the same "
                        "settings as experiments/airline_lstm.yaml)")
    parser.add_argument("--seeds", type=comma_list(int), default=[0, 1, 2], help="comma-separated seeds")
    parser.add_argument("--out", default="airline")
    opts = parser.parse_args(argv)
    summary = report(opts.config, opts.seeds, Path(opts.out))
    rmses = ", ".join(f"{r['rmse']:.1f}" for r in summary["seeds"])
    print(f"LSTM test RMSE {summary['lstm_rmse_mean']:.1f} ± {summary['lstm_rmse_std']:.1f} (seeds: {rmses}); "
          f"seasonal naive {summary['seasonal_naive_rmse']:.1f}; wrote {opts.out}/airline.json and airline.png")
    return summary
