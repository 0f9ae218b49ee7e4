"""The linear references: they learn, run on the fit's own split, and stack with recurrent runs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import EXPERIMENTS, TINY_TRAINING, write_reviews
from imdb_lightning.cli import cli_main
from imdb_lightning.data.datamodule import IMDBDataModule
from imdb_lightning.data.synthetic import synthetic_reviews
from imdb_lightning.errors import UserError
from imdb_lightning.models.linear import LinearReference, Stack
from imdb_lightning.tools.compare import compare, find_runs, leaderboard
from imdb_lightning.tools.linear import main as linear


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Synthetic reviews of 150 'films' (4 reviews each) as train, and a test file."""
    root = tmp_path_factory.mktemp("linear")
    texts, labels = synthetic_reviews(600, seed=0)
    films = [f"tt{i // 4:07d}" for i in range(600)]
    test_texts, test_labels = synthetic_reviews(200, seed=1)
    return {"train": write_reviews(root / "train.parquet", texts, labels, films),
            "test": write_reviews(root / "test.parquet", test_texts, test_labels)}


@pytest.mark.parametrize("kind", ["nbsvm", "tfidf"])
def test_linear_references_learn_word_pairs(kind):
    texts, labels = synthetic_reviews(800, seed=0)
    held_texts, held_labels = synthetic_reviews(300, seed=1)
    model = LinearReference(kind).fit(texts, np.array(labels))
    accuracy = ((model.logits(held_texts) >= 0) == np.array(held_labels)).mean()
    assert accuracy > 0.8  # chance is 0.5; "not good" / "not bad" need the word pairs
    assert model.parameters > 0


@pytest.mark.parametrize("kind", ["nbsvm", "tfidf"])
def test_a_saved_linear_reference_predicts_as_the_fitted_one(kind, tmp_path):
    texts, labels = synthetic_reviews(400, seed=0)
    held_texts, _ = synthetic_reviews(100, seed=1)
    model = LinearReference(kind, ngrams=3).fit(texts, np.array(labels))
    model.save(tmp_path / "linear.npz")
    loaded = LinearReference.load(tmp_path / "linear.npz")
    assert (loaded.kind, loaded.C, loaded.ngrams) == (model.kind, model.C, model.ngrams)
    assert loaded.parameters == model.parameters
    # weights are stored as float32: the logits agree to float32 rounding, the labels exactly
    np.testing.assert_allclose(loaded.logits(held_texts), model.logits(held_texts), rtol=1e-5, atol=1e-5)
    assert ((loaded.logits(held_texts) >= 0) == (model.logits(held_texts) >= 0)).all()
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary left


def test_a_damaged_linear_file_is_named(tmp_path):
    (tmp_path / "linear.npz").write_bytes(b"not numpy")
    with pytest.raises(UserError, match=r"linear\.npz: not a saved linear model"):
        LinearReference.load(tmp_path / "linear.npz")


def test_linear_command_uses_the_fits_split_and_tests(files, tmp_path, cache_dir):
    data = ["--data.train_files", files["train"], "--data.test_files", files["test"], "--data.cache_dir", cache_dir]
    records = linear(["--config", str(EXPERIMENTS / "lstm.yaml"), *data, "--logdir", str(tmp_path)])
    assert [r["model"] for r in records] == ["nbsvm", "tfidf"]
    # the very split `fit` with these data settings would use: films held out, same reviews
    from imdb_lightning.serve.predictor import load

    dm = IMDBDataModule(train_files=files["train"], test_files=files["test"], cache_dir=cache_dir)
    val, test = dm.reviews("val"), dm.reviews("test")
    for record in records:
        saved = json.loads((Path(record["folder"]) / "run.json").read_text())
        assert saved["validation"] == dm.validation and saved["validation"]["kind"] == "grouped"
        # the figures are the saved model's on exactly those reviews
        for stage, reviews in (("val", val), ("test", test)):
            predicted = np.array(load(record["folder"]).predict(reviews.texts)) >= 0.5
            assert saved[stage][f"{stage}/acc"] == pytest.approx((predicted == reviews.labels).mean(), abs=1e-9)
        assert saved["val"]["val/acc"] > 0.8  # it learnt: chance is 0.5
    result = compare(str(tmp_path), tmp_path / "out")
    assert result["finished"] == 2
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "linear_nbsvm" in board and "grouped" in board
    # runs without epochs: a cost plot, no empty per-epoch ones
    assert (tmp_path / "out" / "acc_vs_time.png").is_file() and not (tmp_path / "out" / "val_acc.png").exists()

    # one reference per split seed, each on exactly the split a fit with that seed uses; pooled by compare
    per_split = linear(["--config", str(EXPERIMENTS / "lstm.yaml"), *data, "--models", "nbsvm", "--split_seeds", "0,3",
                        "--logdir", str(tmp_path / "splits")])
    assert per_split[0]["val"] == records[0]["val"]  # split seed 0 is the default split
    moved = IMDBDataModule(train_files=files["train"], cache_dir=cache_dir, split_seed=3)
    moved.reviews("val")
    assert per_split[1]["validation"] == moved.validation
    assert yaml.safe_load((Path(per_split[1]["folder"]) / "config.yaml").read_text())["data"]["split_seed"] == 3
    header, rows = leaderboard(find_runs(tmp_path / "splits"), over_splits=True)
    assert len(rows) == 1 and rows[0][header.index("splits")] == 2

    # word triples are another recipe: named apart, so compare does not pool them with the pairs
    [tri] = linear(["--config", str(EXPERIMENTS / "lstm.yaml"), *data, "--models", "nbsvm", "--ngrams", "3",
                    "--logdir", str(tmp_path)])
    assert tri["model"] == "nbsvm_3gram" and Path(tri["folder"]).parent.name == "linear_nbsvm_3gram"
    assert tri["parameters"] > records[0]["parameters"]  # more features: one weight per n-gram
    assert "ngrams: 3" in (Path(tri["folder"]) / "config.yaml").read_text()
    with pytest.raises(UserError, match="--ngrams must be 1 to 5, got 0"):
        linear(["--config", str(EXPERIMENTS / "lstm.yaml"), *data, "--ngrams", "0"])


class Fixed:
    """A stand-in predictor: fixed logits, one per review."""

    def __init__(self, values):
        self.values = np.array(values, dtype=float)

    def logits(self, texts):
        return self.values[: len(texts)]


def test_stacking_weighs_the_two_logits_and_cross_fits_by_film():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    good = np.where(labels == 1, 1.0, -1.0) + rng.normal(0, 0.5, 400)  # informative
    noise = rng.normal(0, 3, 400)  # useless and loud
    combined = Stack(Fixed(good), [Fixed(noise)])
    held_out = combined.fit(["x"] * 400, labels, np.arange(400) // 4)
    assert abs(combined.weights[0]) > 5 * abs(combined.weights[1])  # the informative model weighs more
    assert ((held_out >= 0) == labels).mean() > 0.9
    assert combined.logits(["x"] * 2) == pytest.approx(good[:2] * combined.weights[0] + noise[:2] * combined.weights[1]
                                                        + combined.weights[2])


def test_a_stacks_validation_figure_is_cross_fitted_where_an_in_sample_one_would_flatter_it():
    from sklearn.linear_model import LogisticRegression

    # 40 members that know nothing, on 100 reviews of 25 films: a stacker scored on the rows it was fitted on
    # finds a pattern in the noise; scored on films it never saw, it is at chance
    rng = np.random.default_rng(0)
    labels, films = rng.integers(0, 2, 100), np.arange(100) // 4
    members = [Fixed(rng.normal(0, 1, 100)) for _ in range(40)]
    stack = Stack(Fixed(rng.normal(0, 1, 100)), members)
    held_out = stack.fit(["x"] * 100, labels, films)
    x = stack.features(["x"] * 100)  # (reviews, 1 + members)
    in_sample = LogisticRegression().fit(x, labels)
    assert ((in_sample.decision_function(x) >= 0) == labels).mean() > 0.75  # what an in-sample figure would say
    assert ((held_out >= 0) == labels).mean() < 0.6  # what the stack reports
    # the saved weights are the stacker fitted on every validation review (it predicts the test split)
    np.testing.assert_allclose(stack.weights, [*in_sample.coef_[0], in_sample.intercept_[0]], rtol=1e-6)

    # a review's cross-fitted logit never saw its own film's labels: flip one film's, its logits stay put
    for film in (0, 13, 24):
        flipped = labels.copy()
        flipped[films == film] = 1 - flipped[films == film]
        again = Stack(stack.linear, members).fit(["x"] * 100, flipped, films)
        np.testing.assert_allclose(again[films == film], held_out[films == film], rtol=1e-9, atol=1e-12)
        assert not np.allclose(again[films != film], held_out[films != film])  # the other folds' stackers did move


def fit_tiny(files, cache_dir, name, *extra):
    cli_main(["fit", "--config", str(EXPERIMENTS / "gru.yaml"), "--data.train_files", files["train"],
              "--data.cache_dir", cache_dir, "--data.vocab_size", "300", "--model.encoder.init_args.hidden_size", "8",
              *TINY_TRAINING, "--trainer.logger.init_args.name", name, *extra])
    return Path(f"lightning_logs/{name}/version_0")


def test_combine_with_recurrent_runs(files, tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = fit_tiny(files, cache_dir, "gru")
    fit = json.loads((run_dir / "run.json").read_text())
    [record] = linear(["--combine", str(run_dir), "--data.test_files", files["test"], "--logdir", "combined"])
    assert record["model"] == "nbsvm+gru" and record["seed"] == fit["seed"] and len(record["weights"]) == 3
    assert record["validation"] == fit["validation"]  # the checkpoint's own split
    assert 0.5 < record["val"]["val/acc"] <= 1 and "test/acc" in record["test"]
    assert Path(record["checkpoints"][0]).name.startswith("best")

    # two runs of one split (the same seed, so the stack is that seed's) stack into one weight each
    other = fit_tiny(files, cache_dir, "gru_wide", "--model.encoder.init_args.hidden_size", "12")
    [both] = linear(["--combine", str(run_dir), str(other), "--data.test_files", files["test"], "--logdir", "combined"])
    assert both["model"] == "nbsvm+gru+gru_wide" and both["seed"] == fit["seed"] and len(both["weights"]) == 4
    assert both["parameters"] == record["parameters"] + json.loads((other / "run.json").read_text())["parameters"]
    config = (Path(both["folder"]) / "config.yaml").read_text()
    assert "combined_with: gru+gru_wide" in config and "weights" not in config  # fitted, not a setting

    result = compare("combined", tmp_path / "out")
    assert result["finished"] == 2

    # the stack is a model: `predict` on its run folder gives the probabilities its test figure came from
    from imdb_lightning.serve.predict import main as predict
    from imdb_lightning.serve.predictor import load

    test = IMDBDataModule(train_files=files["train"], test_files=files["test"], cache_dir=cache_dir).reviews("test")
    stack = load(both["folder"])
    probabilities = np.array(stack.predict(test.texts))
    folder = Path(both["folder"]).absolute()
    monkeypatch.chdir(tmp_path / "combined")  # its record names its checkpoints relative to its own folder
    np.testing.assert_allclose(load(folder).predict(test.texts), probabilities, rtol=1e-6)
    monkeypatch.chdir(tmp_path)
    assert ((probabilities >= 0.5) == test.labels).mean() == pytest.approx(both["test"]["test/acc"])
    predict(["--ckpt_path", both["folder"], "--file", files["test"], "--output", "stacked.csv"])
    written = np.loadtxt("stacked.csv", delimiter=",", skiprows=1, usecols=1)
    np.testing.assert_allclose(written, probabilities, rtol=1e-6)
    # a linear reference alone is applied the same way
    [alone] = linear(["--config", str(EXPERIMENTS / "gru.yaml"), "--data.train_files", files["train"], "--data.test_files",
                      files["test"], "--data.cache_dir", cache_dir, "--models", "tfidf", "--logdir", "alone"])
    assert ((np.array(load(alone["folder"]).predict(test.texts)) >= 0.5) == test.labels).mean() == \
        pytest.approx(alone["test"]["test/acc"])
    with pytest.raises(UserError, match=r"is a folder: give a checkpoint file, or a run folder of `imdb-lightning linear`"):
        load(run_dir)
    # a stack whose recurrent run was moved away says which checkpoint it misses
    run_dir.rename("gru_moved")
    with pytest.raises(UserError, match=r"this stack reads lightning_logs/gru/version_0/checkpoints/best.*not there"):
        load(both["folder"])
    Path("gru_moved").rename(run_dir)
    [tri] = linear(["--combine", str(run_dir), "--ngrams", "3", "--logdir", "combined"])
    assert tri["model"] == "nbsvm_3gram+gru" and Path(tri["folder"]).parent.name == "nbsvm_3gram+gru"

    # a run of another split is stacked apart, on its own split: one stack per split, the first unchanged
    moved = fit_tiny(files, cache_dir, "gru_split3", "--data.split_seed", "3")
    first, second = linear(["--combine", str(run_dir), str(moved), "--logdir", "per_split"])
    assert first["model"] == "nbsvm+gru" and first["val"] == record["val"] and len(first["weights"]) == 3
    assert second["model"] == "nbsvm+gru_split3" and len(second["weights"]) == 3
    assert second["validation"] == json.loads((moved / "run.json").read_text())["validation"]
    assert yaml.safe_load((Path(second["folder"]) / "config.yaml").read_text())["data"]["split_seed"] == 3
    with pytest.raises(UserError, match=r"leave out --combine \(its runs name theirs\)"):
        linear(["--combine", str(run_dir), "--split_seeds", "0,1"])
    with pytest.raises(UserError, match=r"a run is given twice"):
        linear(["--combine", str(run_dir), str(run_dir)])
    with pytest.raises(UserError, match=r"--data\.split_seed would change them"):
        linear(["--combine", str(run_dir), "--data.split_seed", "3"])
    with pytest.raises(UserError, match=r"not a fit's run folder"):
        linear(["--combine", str(tmp_path)])
    with pytest.raises(UserError, match=r"device 'tpu0' is not a torch device"):
        linear(["--combine", str(run_dir), "--device", "tpu0"])
    with pytest.raises(UserError, match=r"--device sets where --combine's runs predict"):
        linear(["--device", "cpu", "--data.train_files", files["train"]])
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"device 'cuda': no CUDA GPU is available here"):
            linear(["--combine", str(run_dir), "--device", "cuda"])
