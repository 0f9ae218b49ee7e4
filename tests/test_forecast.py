import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from imdb_lightning.cli import cli_main
from imdb_lightning_lab.forecast.data import SeriesDataModule

AIRLINE = Path(__file__).parents[1] / "experiments" / "airline_lstm.yaml"


def test_airline_series_windows_and_chronological_split():
    dm = SeriesDataModule()
    dm.setup("fit")
    assert len(dm.values) == 144 and dm.values[0] == 112 and dm.values[-1] == 432 and dm.months[0] == "1949-01"
    months = {s: dm.splits[s].tensors[2].numpy() for s in ("train", "val", "test")}
    assert len(months["test"]) == 24 and len(months["val"]) == 12 and len(months["train"]) == 144 - 36 - 12
    assert months["train"].max() < months["val"].min() and months["val"].max() < months["test"].min()
    # scaling fitted on training months only: later months exceed 1
    inputs, targets, _ = dm.splits["train"].tensors
    assert float(inputs.min()) == 0.0 and float(inputs.max()) <= 1.0
    assert float(dm.splits["test"].tensors[1].max()) > 1.0
    # each window is the 12 values before its target
    x, y, t = dm.splits["val"][0]
    expected = (dm.values[int(t) - 12 : int(t)] - dm.low) / (dm.high - dm.low)
    np.testing.assert_allclose(x.squeeze(-1).numpy(), expected, rtol=1e-6)


def test_seasonal_naive_is_last_years_month():
    dm = SeriesDataModule()
    dm.setup("test")
    months = dm.splits["test"].tensors[2].numpy()
    expected = np.sqrt(np.mean((dm.values[months] - dm.values[months - 12]) ** 2))
    assert dm.seasonal_naive_rmse() == pytest.approx(expected)


def rmse_by_hand(ckpt) -> float:
    """The checkpoint's forecast of each of the 24 test months from the 12 before it (seasonal base: the change from
    the same month a year earlier), in passengers, against the series: the root mean squared error."""
    from imdb_lightning.models.encoders import build_encoder
    from imdb_lightning_lab.forecast.regressor import SequenceRegressor

    saved = torch.load(ckpt, weights_only=True)
    model = SequenceRegressor(build_encoder(saved["hyper_parameters"]["encoder"])).eval()
    model.load_state_dict({k: v for k, v in saved["state_dict"].items() if k.startswith(("encoder.", "head."))}, strict=False)
    values = SeriesDataModule()  # the packaged series, split as airline_lstm.yaml splits it
    values.setup("test")
    series, low, high = values.values.astype(np.float64), values.low, values.high
    errors = []
    for month in range(len(series) - 24, len(series)):
        window = torch.tensor((series[month - 12 : month] - low) / (high - low), dtype=torch.float32)[None, :, None]
        with torch.no_grad():
            change = float(model(window, torch.tensor([12])))
        errors.append((change + window[0, 0, 0].item()) * (high - low) + low - series[month])
    return float(np.sqrt(np.mean(np.square(errors))))


def test_forecast_cli_fit_test_and_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    short = ["--config", str(AIRLINE), "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false"]
    cli_main(["forecast", "fit", *short])
    best = next(Path("lightning_logs/airline_lstm/version_0/checkpoints").glob("best*.ckpt"))
    assert torch.load(best, weights_only=True)["hyper_parameters"]["encoder"]["init_args"]["input_size"] == 1
    # the summary names the figure it gives (an RMSE, not an accuracy) and what to run next with a forecaster
    record = json.loads(Path("lightning_logs/airline_lstm/version_0/run.json").read_text())
    done = capsys.readouterr().err
    assert f"Done: best val/rmse {record['best']:.4f}" in done and "val/acc" not in done
    assert f"imdb-lightning forecast test --config lightning_logs{os.sep}airline_lstm{os.sep}version_0{os.sep}config.yaml" in done
    assert "predict" not in done and "review" not in done
    # windows of the series are its samples: 3 epochs of 96 training windows
    assert record["train_samples"] == 3 * 96 and record["train_samples_per_s"] > 0
    cli_main(["forecast", "test", *short, "--ckpt_path", str(best)])
    printed = re.search(r"^\W*test/rmse\W+([0-9.]+)\W*$", capsys.readouterr().out, re.M)  # Lightning's table, plain or rich
    assert printed and float(printed.group(1)) == pytest.approx(rmse_by_hand(best), rel=1e-5)

    quick = tmp_path / "quick.yaml"
    quick.write_text(AIRLINE.read_text().replace("max_epochs: 300", "max_epochs: 2"))
    cli_main(["forecast", "report", "--config", str(quick), "--seeds", "0,1", "--out", str(tmp_path / "report")])
    summary = json.loads((tmp_path / "report" / "airline.json").read_text())
    assert len(summary["seeds"]) == 2 and summary["seasonal_naive_rmse"] > 0
    assert len(summary["test_months"]) == 24 and summary["test_months"][-1] == "1960-12"
    assert (tmp_path / "report" / "airline.png").stat().st_size > 5000


def test_seasonal_base_is_the_same_month_last_year():
    dm = SeriesDataModule(seasonal_base=True)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    months = batch["month"].numpy()
    expected = (dm.values[months - 12] - dm.low) / (dm.high - dm.low)
    np.testing.assert_allclose(batch["base"].numpy(), expected, rtol=1e-6)
    with pytest.raises(Exception, match="window >= 12"):
        SeriesDataModule(window=6, seasonal_base=True)


def test_months_are_read_sorted_and_checked(tmp_path):
    from imdb_lightning.errors import DataError
    from imdb_lightning_lab.forecast.data import AIRLINE, SeriesDataModule, read_series

    lines = AIRLINE.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    reversed_file = tmp_path / "reversed.csv"
    reversed_file.write_text("\n".join([header, *reversed(rows)]) + "\n")
    months, values = read_series(reversed_file, "Passengers")
    assert months == read_series(AIRLINE, "Passengers")[0] and months[:2] == ["1949-01", "1949-02"]
    assert values.tolist() == read_series(AIRLINE, "Passengers")[1].tolist()

    cases = {
        "gap.csv": ([header, *[r for r in rows if not r.startswith("1953")]], r"no row for 1953-01 .*from 1952-12 to 1954-01"),
        "twice.csv": ([header, *rows, rows[5]], r"month 1949-06 appears twice"),
        "nan.csv": ([header, *rows[:3], "1949-04,nan", *rows[4:]], r"line 5: column 'Passengers' holds 'nan'"),
        "word.csv": ([header, "March 1949,112", *rows[1:]], r"line 2: column 'Month' holds 'March 1949', not a month"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text("\n".join(content) + "\n")
        with pytest.raises(DataError, match=message):
            read_series(tmp_path / name, "Passengers")
    flat = tmp_path / "flat.csv"
    flat.write_text("\n".join([header, *[f"{r.split(',')[0]},100" for r in rows]]) + "\n")
    with pytest.raises(DataError, match=r"is constant \(100\) over the training months"):
        SeriesDataModule(csv_file=str(flat)).setup("fit")


def test_a_forecast_resumes_exactly(tmp_path, monkeypatch):
    """Stopped by Ctrl-C mid-epoch, or finished and extended, then resumed with --ckpt_path last: the weights
    and validation figures of a straight run (the windows' order depends on the seed and epoch only)."""
    import signal

    def fit(folder: str, epochs: int, *extra: str) -> dict:
        (tmp_path / folder).mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path / folder)
        try:
            cli_main(["forecast", "fit", "--config", str(AIRLINE), "--trainer.max_epochs", str(epochs),
                      "--trainer.enable_progress_bar", "false", *extra])
        except SystemExit as stopped:  # (Ctrl-C)
            assert stopped.code == 130
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores further Ctrl-C
        return torch.load(tmp_path / folder / "lightning_logs/airline_lstm/version_0/checkpoints/last.ckpt", weights_only=True)

    straight = fit("straight", 4)
    stopped = fit("stopped", 4, "--trainer.callbacks+=conftest.CtrlCAt", "--trainer.callbacks.step", "17")
    assert stopped["global_step"] == 18  # mid-epoch (12 steps an epoch): step 17 finished, then it stopped
    fit("extended", 2)
    for resumed in (fit("stopped", 4, "--ckpt_path", "last"), fit("extended", 4, "--ckpt_path", "last")):
        assert resumed["global_step"] == straight["global_step"] == 48
        for name, tensor in straight["state_dict"].items():
            torch.testing.assert_close(resumed["state_dict"][name], tensor, atol=1e-6, rtol=0, msg=name)
        best = lambda ckpt: next(c for k, c in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint"))  # noqa: E731
        assert float(best(resumed)["best_model_score"]) == pytest.approx(float(best(straight)["best_model_score"]), abs=1e-5)
