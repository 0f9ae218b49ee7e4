"""A run's record tells the truth: every figure `compare` shows names the checkpoint and the data it came
from, and re-evaluating that checkpoint on that data gives the figure again.

One small lab (module fixture) is built as a user would: a fit, tested, resumed with more epochs and a
new batch size (its best checkpoint moves), tested again on two files (into version folders whose names
sort the wrong way as text), and a two-seed sweep whose runs test themselves. The reference figures
are computed apart from the training loop: the files the record names (checked by digest), the split
carved again, `imdb_lightning.load` for the logits and scikit-learn for the figures.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from conftest import QUICKSTART, write_reviews
from imdb_lightning.cli import cli_main
from imdb_lightning.data.sources import Reviews
from imdb_lightning.data.split import carve_validation
from imdb_lightning.data.synthetic import synthetic_reviews
from imdb_lightning.runs import best_checkpoint, read_record
from imdb_lightning.serve.predictor import load
from imdb_lightning.standard_error import clustered_standard_error
from imdb_lightning.tools.compare import compare, find_runs, leaderboard

FLAGS = ["--config", str(QUICKSTART), "--data.source", "files", "--data.vocab_size", "300",
         "--model.optimizer.init_args.lr", "0.01", "--trainer.enable_progress_bar", "false"]


def file_digest(path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def reviews_digest(reviews: Reviews) -> str:
    from imdb_lightning.data.identity import reviews_digest  # (what a record's data digests are)

    return reviews_digest(reviews)


def read_reviews(files: list[str]) -> Reviews:
    """Reviews of parquet files, read with pyarrow alone (not the project's readers)."""
    tables = [pq.read_table(f) for f in files]
    movies = [t.column("movie").to_pylist() if "movie" in t.column_names else None for t in tables]
    return Reviews([x for t in tables for x in t.column("text").to_pylist()],
                   np.array([y for t in tables for y in t.column("label").to_pylist()], dtype=np.int8),
                   np.array([m for part in movies for m in part], dtype=object) if all(m is not None for m in movies) else None)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    texts, labels = synthetic_reviews(600, seed=0)
    data = {"train": write_reviews(root / "train.parquet", texts, labels, [f"tt{i // 4:07d}" for i in range(600)])}
    for name, seed in (("test_a", 1), ("test_b", 2)):
        data[name] = write_reviews(root / f"{name}.parquet", *synthetic_reviews(200, seed=seed))
    cache = ["--data.cache_dir", str(root / "cache")]
    lab = [*FLAGS, *cache, "--data.train_files", data["train"], "--trainer.logger.init_args.name", "lab"]
    here = os.getcwd()
    os.chdir(root)  # the commands run where a user runs them; compare later runs from elsewhere
    try:
        cli_main(["fit", *lab, "--trainer.max_epochs", "1"])
        first_best = read_record("lightning_logs/lab/version_0").get("best_checkpoint")
        cli_main(["test", *lab, "--ckpt_path", "best", "--data.test_files", data["test_a"],
                  "--trainer.logger.init_args.version", "5"])
        cli_main(["fit", *lab, "--trainer.max_epochs", "3", "--data.batch_size", "32", "--ckpt_path", "last"])
        stale = leaderboard(find_runs(root / "lightning_logs"))  # the best moved; its only test is of the old one
        for version, test in ((9, "test_a"), (10, "test_b")):  # version_10 is the newer, though it sorts first as text
            cli_main(["test", *lab, "--ckpt_path", "best", "--data.test_files", data[test],
                      "--trainer.logger.init_args.version", str(version)])
        cli_main(["sweep", "--encoders", "gru", "--seeds", "0,1", "--config", str(QUICKSTART), "--logdir", "lightning_logs",
                  *[f"--set={k[2:]}={v}" for k, v in zip(FLAGS[2::2], FLAGS[3::2])], f"--set=data.cache_dir={root / 'cache'}",
                  f"--set=data.train_files={data['train']}", f"--set=data.test_files={data['test_a']}",
                  "--set=trainer.max_epochs=2", "--set=data.max_length=32", "--set=data.truncation=tail",
                  "--set=data.lowercase=false"])
    finally:
        os.chdir(here)
    return {"root": root, "data": data, "first_best": first_best, "stale": stale, "cache": cache}


def reproduce_validation(folder: Path, record: dict) -> tuple[float, float]:
    """(accuracy, 95% half-width) of the record's best checkpoint on the validation reviews its record names."""
    best, data = record["best_checkpoint"], record["data"]
    checkpoint = folder / best["path"]
    assert file_digest(checkpoint) == best["digest"]
    train = read_reviews(data["train"]["files"])
    assert reviews_digest(train) == data["train"]["digest"]
    settings = data["settings"]
    (_, val), _ = carve_validation(train, settings["val_split"], settings["val_fraction"], settings["split_seed"],
                                   settings["source"], settings["group_column"])
    assert reviews_digest(val) == data["val_digest"]
    correct = ((np.array(load(checkpoint).logits(val.texts)) >= 0) == val.labels).astype(float)
    return correct.mean(), 1.96 * clustered_standard_error(correct, np.unique(val.groups.astype(str), return_inverse=True)[1])


def reproduce_test(evaluation: dict) -> dict:
    """test/acc, f1, auroc of an evaluation's checkpoint on the test data it names."""
    checkpoint, data = evaluation["checkpoint_file"], evaluation["data"]
    assert file_digest(checkpoint) == evaluation["checkpoint"]["digest"]
    test = read_reviews(data["files"])
    assert reviews_digest(test) == data["digest"] and evaluation["reviews_seen"] == len(test)
    logits = np.array(load(checkpoint).logits(test.texts))
    probabilities = 1 / (1 + np.exp(-logits.astype(np.float32)))  # the model's float32 outputs: their ties are the metric's
    return {"test/acc": ((logits >= 0) == test.labels).mean(), "test/f1": f1_score(test.labels, logits >= 0),
            "test/auroc": roc_auc_score(test.labels, probabilities)}


def test_every_figure_compare_shows_names_its_checkpoint_and_data_and_is_reproduced(lab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not where the runs were made: records name paths relative to their run folder
    logs = lab["root"] / "lightning_logs"
    result = compare(logs, tmp_path / "out")
    header, rows = result["header"], result["rows"]
    runs = {r.folder: r for r in find_runs(logs)}
    assert sorted(row[0] for row in rows) == ["gru", "lab"] and result["finished"] == 3
    assert all(row[header.index("test acc")][0] == row[header.index("test acc")][0] for row in rows)  # none dropped
    for row in rows:
        members = [r for r in runs.values() if r.name == row[0]]
        validation = [reproduce_validation(r.folder, r.record) for r in members]
        tests = [reproduce_test(r.test_evaluation()) for r in members]
        assert row[header.index("val acc")][0] == pytest.approx(np.mean([v[0] for v in validation]), abs=1e-6)
        assert row[header.index("val ±95%")][0] == pytest.approx(np.mean([v[1] for v in validation]), abs=1e-6)
        for figure, column in (("test/acc", "test acc"), ("test/f1", "test f1"), ("test/auroc", "test auroc")):
            assert row[header.index(column)][0] == pytest.approx(np.mean([t[figure] for t in tests]), abs=1e-6), (row[0], figure)
        # the test is of the checkpoint the validation figure belongs to, never of another one
        assert all(r.test_evaluation()["checkpoint"]["digest"] == r.record["best_checkpoint"]["digest"] for r in members)
    lab_row = next(row for row in rows if row[0] == "lab")
    text = result["leaderboard"].read_text()
    best = read_record(logs / "lab" / "version_0")["best_checkpoint"]
    assert f"lab/version_0: val acc {lab_row[header.index('val acc')][0]:.4f} of lab/version_0/{best['path']}" in text
    assert "on test_b.parquet" in text and "in lab/version_10/run.json" in text


def test_compare_shows_a_runs_newest_test_and_names_its_file(lab, monkeypatch):
    monkeypatch.chdir(lab["root"])
    header, rows = leaderboard(find_runs(Path("lightning_logs")))
    lab_row = next(row for row in rows if row[0] == "lab")
    newest = read_record(Path("lightning_logs/lab/version_10"))["test"]  # version_9 is older, though it sorts after as text
    assert lab_row[header.index("test auroc")][0] == pytest.approx(newest["test/auroc"], abs=1e-9)
    assert lab_row[header.index("test data")] == "test_b.parquet"
    gru_row = next(row for row in rows if row[0] == "gru")
    assert gru_row[header.index("test data")] == "test_a.parquet"


def test_a_test_of_a_checkpoint_a_resume_replaced_is_never_shown_as_the_runs(lab):
    header, rows = lab["stale"]
    [row] = rows
    assert row[header.index("test acc")][0] != row[header.index("test acc")][0]  # NaN: not the old checkpoint's figure
    record = read_record(lab["root"] / "lightning_logs" / "lab" / "version_0")
    assert record["best_checkpoint"]["digest"] != lab["first_best"]["digest"]  # (the resume moved the best)
    stale = read_record(lab["root"] / "lightning_logs" / "lab" / "version_5")
    assert stale["evaluations"][0]["checkpoint"]["digest"] == lab["first_best"]["digest"]


def test_a_resume_records_its_segment_and_keeps_config_yaml(lab):
    run = lab["root"] / "lightning_logs" / "lab" / "version_0"
    # config.yaml: the configuration the run started with, not rewritten as if every epoch had used the new one
    assert "max_epochs: 1\n" in (run / "config.yaml").read_text() and "batch_size: 64\n" in (run / "config.yaml").read_text()
    record = read_record(run)
    first, second = record["segments"]
    assert first["from_checkpoint"] is None and first["config"]["trainer"]["max_epochs"] == 1
    assert second["from_checkpoint"]["path"] == "checkpoints/last.ckpt" and second["start_step"] == first["end_step"]
    assert second["changes"] == {"data.batch_size": [64, 32], "trainer.max_epochs": [1, 3]}
    assert second["config"]["data"]["batch_size"] == 32 and second["status"] == "finished"


def test_a_runs_recipe_is_its_configuration_fit_takes_again(lab, tmp_path):
    import yaml

    from imdb_lightning.runs import run_recipe
    from imdb_lightning.training import read_config

    for run in (lab["root"] / "lightning_logs" / "gru").glob("version_*"):  # sweep cells: a seed, --set overrides
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(run_recipe(run)))
        config = read_config([str(tmp_path / "recipe.yaml")])
        assert config.seed_everything == read_record(run)["seed"]
    assert sorted(read_record(r)["seed"] for r in (lab["root"] / "lightning_logs" / "gru").glob("version_*")) == [0, 1]
    assert config.data.max_length == 32 and config.data.truncation == "tail"
    assert config.model.encoder.init_args.cell == "gru" and config.trainer.logger.init_args.version is None


def test_validate_reads_the_checkpoints_split_and_says_so(lab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = lab["root"] / "lightning_logs" / "lab" / "version_0"
    record, checkpoint = read_record(run), str(best_checkpoint(run))
    cli_main(["validate", "--config", str(run / "config.yaml"), "--ckpt_path", checkpoint,
              "--data.split_seed", "3", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])
    [validated] = [read_record(f) for f in (tmp_path / "logs" / "lab").glob("version_*")]
    assert validated["val"]["val/acc"] == pytest.approx(record["best_val_acc"], abs=1e-6)  # its own split's figure
    assert "data.split_seed 0 (this command line: 3)" in capsys.readouterr().err
    [evaluation] = validated["evaluations"]
    assert evaluation["data"]["digest"] == record["data"]["val_digest"] and evaluation["settings_from"] == "checkpoint"
    # on the command line's split when asked by name, and recorded as such
    cli_main(["validate", "--config", str(run / "config.yaml"), "--ckpt_path", checkpoint,
              "--data.split_seed", "3", "--data_settings", "command_line", "--trainer.logger.init_args.save_dir",
              str(tmp_path / "logs")])
    asked = [read_record(f) for f in sorted((tmp_path / "logs" / "lab").glob("version_*"))][-1]["evaluations"][0]
    assert asked["settings_from"] == "command line" and asked["data"]["digest"] != record["data"]["val_digest"]
    # with no data flags at all (and only an encoder class, which the checkpoint's replaces), the checkpoint says
    # where its training reviews are
    cli_main(["validate", "--ckpt_path", checkpoint, "--model.encoder", "imdb_lightning.models.encoders.RecurrentEncoder",
              "--trainer.logger.init_args.save_dir", str(tmp_path / "bare"),
              "--trainer.enable_progress_bar", "false", "--data.cache_dir", str(tmp_path / "cache")])
    [bare] = [read_record(f) for f in (tmp_path / "bare").glob("*/version_*")]
    assert bare["val"]["val/acc"] == pytest.approx(record["best_val_acc"], abs=1e-6)


def test_a_checkpoint_from_before_data_identities_still_predicts_tests_and_resumes(lab, tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    gru = lab["root"] / "lightning_logs" / "gru" / "version_0"
    ckpt = torch.load(best_checkpoint(gru), weights_only=True)
    data = next(v for v in ckpt.values() if isinstance(v, dict) and "tokenizer" in v)
    del data["data"]  # what checkpoints held before: no data identity, no record totals
    ckpt["callbacks"] = {k: v for k, v in ckpt["callbacks"].items() if k != "RunRecord"}
    torch.save(ckpt, tmp_path / "old.ckpt")
    test = read_reviews([lab["data"]["test_a"]])
    assert load(tmp_path / "old.ckpt").predict(test.texts[:3]) == load(best_checkpoint(gru)).predict(test.texts[:3])
    cli_main(["test", *FLAGS, *lab["cache"], "--ckpt_path", str(tmp_path / "old.ckpt"), "--data.test_files",
              lab["data"]["test_a"], "--trainer.logger.init_args.save_dir", "logs"])
    [tested] = [read_record(f) for f in Path("logs").glob("*/version_*")]
    assert tested["test"] == read_record(gru)["test"]  # its preprocessing from its saved settings, as before
    cli_main(["fit", *FLAGS, *lab["cache"], "--data.train_files", lab["data"]["train"], "--data.max_length", "32",
              "--data.truncation", "tail", "--data.lowercase", "false", "--model.encoder.init_args.cell", "gru",
              "--trainer.max_epochs", "3", "--ckpt_path", str(tmp_path / "old.ckpt"),
              "--trainer.logger.init_args.save_dir", "fits"])
    [resumed] = [read_record(f) for f in Path("fits").glob("*/version_*")]
    assert resumed["status"] == "finished" and resumed["segments"][0]["from_checkpoint"]["path"].endswith("old.ckpt")


def test_test_uses_the_checkpoints_preprocessing_as_predict_does(lab, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    gru = lab["root"] / "lightning_logs" / "gru" / "version_0"
    checkpoint = best_checkpoint(gru)  # max_length 32, tail, not lowercased
    cli_main(["test", *FLAGS, *lab["cache"], "--ckpt_path", str(checkpoint), "--data.test_files", lab["data"]["test_b"],
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])  # the quickstart's 200, head, lowercase
    figures = read_record(next((tmp_path / "logs" / "quickstart").glob("version_*")))["test"]
    test = read_reviews([lab["data"]["test_b"]])
    logits = np.array(load(checkpoint).logits(test.texts))
    probabilities = 1 / (1 + np.exp(-logits.astype(np.float32)))
    assert figures["test/auroc"] == pytest.approx(roc_auc_score(test.labels, probabilities), abs=1e-6)
    assert figures["test/acc"] == pytest.approx(((logits >= 0) == test.labels).mean(), abs=1e-6)
    # (and the loss is the mean over reviews, whatever the batches)
    assert figures["test/loss"] == pytest.approx(np.mean(np.logaddexp(0, logits) - test.labels * logits), abs=1e-6)
    err = capsys.readouterr().err
    assert "data.max_length 32 (this command line: 200)" in err and "data.truncation tail (this command line: head)" in err


@pytest.mark.parametrize("command", ["test", "validate"])
def test_an_evaluation_without_a_checkpoint_is_refused(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        cli_main([command, "--config", str(QUICKSTART), "--data.synthetic_size", "300"])
    assert str(exit.value.code).startswith(f"imdb-lightning: error: {command} needs --ckpt_path")
    assert not Path("lightning_logs").exists()  # no run folder, no record of untrained weights


def test_records_name_paths_relative_to_their_run_folder(lab):
    logs = (lab["root"] / "lightning_logs").resolve()
    for path in logs.glob("*/version_*/run.json"):
        record = json.loads(path.read_text())
        entries = [record.get("best_checkpoint"), *[e["checkpoint"] for e in record.get("evaluations", [])],
                   *[s["from_checkpoint"] for s in record.get("segments", [])]]
        assert any(entries), path  # every run names the checkpoints it made or read
        for entry in filter(None, entries):
            assert not os.path.isabs(entry["path"]) and entry["digest"].startswith("sha256:"), entry
            assert (path.parent / entry["path"]).resolve().is_relative_to(logs / path.parent.parent.name), entry
