"""The command line, driven in-process, for every experiment YAML."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SMALL, TINY_TRAINING
from imdb_lightning.cli import cli_main

EXPERIMENTS_DIR = Path(__file__).parents[1] / "experiments"
# Sentiment experiments and their tuned versions; airline_*.yaml are forecasting ones (tests/test_forecast.py),
# recipe.yaml the shared bases the others name; pretrain/ holds language models and the classifiers
# fine-tuned from them, which need a language model first (tests/test_pretrain.py runs both); search/ holds
# search spaces for `tune` (tests/test_tune.py).
EXPERIMENTS = sorted(
    p for p in [*EXPERIMENTS_DIR.glob("*.yaml"), *EXPERIMENTS_DIR.glob("*/*.yaml")]
    if not p.stem.startswith("airline") and p.stem != "recipe" and p.parent.name not in ("pretrain", "search")
)


def run_name(config: Path) -> str:  # experiments/gru.yaml logs as gru, experiments/tuned/gru.yaml as tuned_gru
    return config.stem if config.parent == EXPERIMENTS_DIR else f"{config.parent.name}_{config.stem}"


def test_experiments_exist():
    names = {run_name(p) for p in EXPERIMENTS}
    assert names >= {"rnn", "lstm", "gru", "bilstm", "bigru", "nbow", "quickstart"}
    assert names >= {"tuned_rnn", "tuned_lstm", "tuned_gru", "tuned_bilstm", "tuned_bigru", "tuned_nbow"}


@pytest.mark.parametrize("config", EXPERIMENTS, ids=run_name)
def test_fit_test_predict_for_every_experiment(config, tmp_path, cache_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # runs land in ./lightning_logs
    common = ["--config", str(config), "--data.cache_dir", cache_dir, *SMALL]
    cli_main(["fit", *common])
    runs = list(Path("lightning_logs").glob("*/version_0"))
    assert len(runs) == 1, runs
    run = runs[0]
    assert run.parent.name == run_name(config)  # lightning_logs/<experiment>/version_N
    assert (run / "config.yaml").is_file() and list(run.glob("events.out.tfevents.*"))
    best = next((run / "checkpoints").glob("best*.ckpt"))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    torch.load(best, weights_only=True)

    capsys.readouterr()
    cli_main(["test", *common, "--ckpt_path", str(best), "--trainer.limit_test_batches", "1.0"])  # every test review
    printed = re.search(r"^\W*test/acc\W+([0-9.]+)\W*$", capsys.readouterr().out, re.M)  # Lightning's table, plain or rich
    # the figure is the checkpoint's accuracy on the test reviews, as the checkpoint alone scores them
    import imdb_lightning
    from imdb_lightning.data.datamodule import IMDBDataModule

    test = IMDBDataModule(source="synthetic", synthetic_size=int(SMALL[SMALL.index("--data.synthetic_size") + 1]),
                          cache_dir=cache_dir).reviews("test")
    predicted = np.array(imdb_lightning.load(best).predict(test.texts)) >= 0.5
    assert printed and float(printed.group(1)) == pytest.approx((predicted == test.labels).mean(), abs=1e-6)

    reviews = tmp_path / "reviews.txt"
    reviews.write_text("a great film\nthe film was not good .\nthe music was superb .\n")
    cli_main(["predict", "--config", str(config), "--file", str(reviews)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line, text in zip(lines, ["a great film", "the film was not good .", "the music was superb ."]):
        label, prob, shown = line.split("\t")
        assert label in {"positive", "negative"} and 0 <= float(prob) <= 1 and shown == text
        assert (label == "positive") == (float(prob) >= 0.5)


def test_print_config_shows_merged_defaults(capsys):
    with pytest.raises(SystemExit) as exit:
        cli_main(["fit", "--config", str(EXPERIMENTS_DIR / "bilstm.yaml"), "--print_config"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert "bidirectional: true" in out and "name: bilstm" in out and "monitor: val/acc" in out


def test_hub_offline_error_is_one_clear_line(tmp_path, monkeypatch, capsys):
    from imdb_lightning.data import sources

    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(SystemExit) as exit:
        cli_main(["fit", "--config", str(EXPERIMENTS_DIR / "lstm.yaml"), "--data.cache_dir", str(tmp_path), *SMALL[4:]])
    assert "cannot reach the Hugging Face hub" in str(exit.value.code)
    assert "--data.train_files" in str(exit.value.code)


def test_predict_needs_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="no checkpoint found"):
        cli_main(["predict", "--config", str(EXPERIMENTS[0]), "some review"])
    with pytest.raises(SystemExit, match="no such checkpoint"):
        cli_main(["predict", "--ckpt_path", "nope.ckpt", "some review"])


def test_weight_averaging_from_the_command_line(tmp_path, cache_dir, monkeypatch, capsys):
    # docs/results.md "What mattered": Lightning's EMA callback appended on the command line, no code
    monkeypatch.chdir(tmp_path)
    config = EXPERIMENTS_DIR / "tuned" / "gru.yaml"
    ema = ["--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging", "--trainer.callbacks.decay", "0.5"]
    cli_main(["fit", "--config", str(config), "--data.cache_dir", cache_dir, *SMALL, *ema])
    best = next(Path("lightning_logs/tuned_gru/version_0/checkpoints").glob("best*.ckpt"))
    ckpt = torch.load(best, weights_only=True)
    # the averaged weights are the ones validated and saved; the trained ones are kept beside them
    name = "encoder.layers.0.0.weight_hh_l0"
    assert not torch.equal(ckpt["state_dict"][name], ckpt["current_model_state"][name])
    capsys.readouterr()  # fit's own output (a model summary on stdout where rich is installed)
    cli_main(["predict", "--ckpt_path", str(best), "a great film"])
    label, prob, _ = capsys.readouterr().out.strip().split("\t")
    assert label in {"positive", "negative"} and 0 <= float(prob) <= 1


def test_default_root_dir_moves_runs_and_test_reads_only_test_files(tmp_path, cache_dir, monkeypatch):
    import json

    from conftest import EXPERIMENTS, write_reviews
    from imdb_lightning.data.synthetic import synthetic_reviews

    monkeypatch.chdir(tmp_path)
    texts, labels = synthetic_reviews(300, seed=0)
    train = write_reviews(tmp_path / "train.parquet", texts, labels)
    test = write_reviews(tmp_path / "test.parquet", texts[:60], labels[:60])
    small = ["--data.cache_dir", cache_dir, "--data.vocab_size", "300", *TINY_TRAINING]
    cli_main(["fit", "--config", str(EXPERIMENTS / "lstm.yaml"), "--data.train_files", train, *small,
              "--trainer.default_root_dir", "elsewhere"])
    run = tmp_path / "elsewhere" / "lightning_logs" / "lstm" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (tmp_path / "lightning_logs").exists()
    # test needs the test files and the checkpoint, never the training files it does not read
    cli_main(["test", "--config", str(EXPERIMENTS / "lstm.yaml"), "--data.test_files", test, *small,
              "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    tested = json.loads(next((tmp_path / "lightning_logs" / "lstm").glob("version_*/run.json")).read_text())
    assert tested["kind"] == "test" and 0 <= tested["test"]["test/acc"] <= 1


def test_predict_config_finds_runs_under_default_root_dir_and_single_class_test_has_no_auroc(tmp_path, cache_dir, monkeypatch,
                                                                                             capsys):
    import json

    from conftest import EXPERIMENTS, write_reviews
    from imdb_lightning.data.synthetic import synthetic_reviews

    monkeypatch.chdir(tmp_path)
    texts, labels = synthetic_reviews(300, seed=0)
    train = write_reviews(tmp_path / "train.parquet", texts, labels)
    positive = [t for t, y in zip(texts, labels) if y == 1][:40]
    only_positive = write_reviews(tmp_path / "positive.parquet", positive, [1] * len(positive))
    small = ["--config", str(EXPERIMENTS / "lstm.yaml"), "--data.cache_dir", cache_dir, "--data.vocab_size", "300",
             *TINY_TRAINING]
    cli_main(["fit", *small, "--data.train_files", train])  # an older run, in ./lightning_logs
    cli_main(["fit", *small, "--data.train_files", train, "--trainer.default_root_dir", "elsewhere"])
    capsys.readouterr()
    root_yaml = tmp_path / "root.yaml"
    root_yaml.write_text("trainer:\n  default_root_dir: elsewhere\n")
    cli_main(["predict", "--config", str(EXPERIMENTS / "lstm.yaml"), "--config", str(root_yaml), "a fine film"])
    assert f"elsewhere{os.sep}lightning_logs{os.sep}lstm{os.sep}version_0" in capsys.readouterr().err
    cli_main(["predict", "--config", str(EXPERIMENTS / "lstm.yaml"), "--ckpt_path", "last", "a fine film"])
    assert f"lightning_logs{os.sep}lstm{os.sep}version_0{os.sep}checkpoints{os.sep}last.ckpt" in capsys.readouterr().err
    cli_main(["test", *small, "--data.test_files", only_positive, "--ckpt_path", "best"])
    assert "test/auroc is undefined and left out: every test review is positive" in capsys.readouterr().err
    tested = json.loads((tmp_path / "lightning_logs" / "lstm" / "version_1" / "run.json").read_text())
    assert "test/auroc" not in tested["test"] and 0 <= tested["test"]["test/acc"] <= 1


def test_fit_and_test_end_with_a_summary_and_no_unactionable_noise(tmp_path, cache_dir, monkeypatch, capsys):
    from conftest import QUICKSTART

    monkeypatch.chdir(tmp_path)
    cli_main(["fit", "--config", str(QUICKSTART), *SMALL, "--data.cache_dir", cache_dir])
    out, err = capsys.readouterr()
    run = Path("lightning_logs") / "quickstart" / "version_0"
    best = next((tmp_path / run / "checkpoints").glob("best*.ckpt"))
    assert "Done: best val/acc 0." in err and f"run folder:      {run}" in err and f"best checkpoint: {run}" in err
    assert f'imdb-lightning predict --ckpt_path {run / "checkpoints" / best.name} "a wonderful film"' in err
    assert "tensorboard --logdir lightning_logs" in err
    assert "Tip: For seamless cloud logging" not in out + err and "LeafSpec" not in out + err
    cli_main(["test", "--config", str(QUICKSTART), *SMALL, "--data.cache_dir", cache_dir, "--ckpt_path", "best"])
    assert "Done: test/acc 0." in capsys.readouterr().err
