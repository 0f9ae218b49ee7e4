"""The film-clustered standard error of an accuracy, against a table worked by hand, and as the classifier and
the linear references log it for their own validation reviews."""

import lightning as L
import numpy as np
import pytest
import torch

from conftest import quick_trainer, write_reviews
from imdb_lightning.data.datamodule import IMDBDataModule
from imdb_lightning.data.synthetic import synthetic_reviews
from imdb_lightning.models.classifier import SentimentClassifier
from imdb_lightning.models.encoders import RecurrentEncoder
from imdb_lightning.serve.predictor import Predictor
from imdb_lightning.standard_error import clustered_standard_error


def by_hand(correct, films) -> float:
    """sqrt(G / (G - 1) * sum over films of (their residuals' sum)^2) / n, looping over films."""
    correct = [float(c) for c in correct]
    mean, n = sum(correct) / len(correct), len(correct)
    sums = {}
    for c, film in zip(correct, films):
        sums[film] = sums.get(film, 0.0) + (c - mean)
    g = len(sums)
    return (g / (g - 1) * sum(s * s for s in sums.values())) ** 0.5 / n


def test_the_clustered_error_of_a_small_table_worked_by_hand():
    # films a (3 reviews, 2 right), b (2, 1 right), c (4, 2 right): mean 5/9; residual sums 1/3, -1/9, -2/9;
    # squares 9/81 + 1/81 + 4/81 = 14/81; G / (G - 1) = 3/2: variance 21/81 / 81, so sqrt(21) / 81
    correct = np.array([1, 1, 0, 1, 0, 0, 0, 1, 1], dtype=float)
    films = np.array(["a", "a", "a", "b", "b", "c", "c", "c", "c"])
    assert clustered_standard_error(correct, films) == pytest.approx(21**0.5 / 81, rel=1e-12)
    assert by_hand(correct, films) == pytest.approx(21**0.5 / 81, rel=1e-12)
    # film names or numbers, in any order: the same clusters
    order = np.random.default_rng(0).permutation(9)
    assert clustered_standard_error(correct[order], np.unique(films, return_inverse=True)[1][order]) == \
        pytest.approx(21**0.5 / 81, rel=1e-12)
    # every review its own film: sqrt(n / (n - 1) * p (1 - p) / n), the binomial error with the same correction
    assert clustered_standard_error(correct, np.arange(9)) == pytest.approx((9 / 8 * (5 / 9) * (4 / 9) / 9) ** 0.5, rel=1e-12)
    # the smallest tables that have one: two reviews of two films (mean 1/2, residuals +-1/2: sqrt(2 * 1/2) / 2),
    # and two films (a: 2 right of 2, b: wrong; mean 2/3, residual sums +-2/3: sqrt(2 * 8/9) / 3)
    assert clustered_standard_error(np.array([1.0, 0.0]), np.array(["a", "b"])) == pytest.approx(0.5, rel=1e-12)
    assert clustered_standard_error(np.array([1.0, 1.0, 0.0]), np.array(["a", "a", "b"])) == pytest.approx(4 / 9, rel=1e-12)
    # nothing to estimate a spread from: one review, or one film
    assert np.isnan(clustered_standard_error(correct[:1], films[:1]))
    assert np.isnan(clustered_standard_error(correct, np.zeros(9)))


@pytest.mark.parametrize("seed", range(5))
def test_the_clustered_error_agrees_with_the_hand_loop_on_random_tables(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    correct, films = rng.integers(0, 2, n).astype(float), rng.integers(0, int(rng.integers(2, 12)), n)
    if len(np.unique(films)) < 2:
        films[0], films[1] = 0, 1
    assert clustered_standard_error(correct, films) == pytest.approx(by_hand(correct, films), rel=1e-12)


@pytest.fixture(scope="module")
def films_file(tmp_path_factory):
    """600 generated reviews of 60 films, 10 each, a film's reviews of one label (as most IMDB films' are): a
    model leaning to one side is right or wrong about a whole film together."""
    texts, labels = synthetic_reviews(600, seed=0)
    seen = {0: 0, 1: 0}
    films = []
    for label in labels:
        films.append(f"tt{label}{seen[label] // 10:06d}")
        seen[label] += 1
    return write_reviews(tmp_path_factory.mktemp("films") / "train.parquet", texts, labels, films)


def test_the_classifiers_val_acc_se_is_the_error_clustered_by_the_reviews_films(films_file, cache_dir, tmp_path):
    L.seed_everything(0, verbose=False)
    dm = IMDBDataModule(train_files=films_file, cache_dir=cache_dir, vocab_size=300, max_length=80, batch_size=16,
                        val_fraction=0.3)
    model = SentimentClassifier(RecurrentEncoder(vocab_size=300, embed_dim=16, hidden_size=16, cell="gru"),
                                optimizer=lambda p: torch.optim.Adam(p, lr=0.01))
    trainer = quick_trainer(tmp_path, max_epochs=1, limit_train_batches=4)
    trainer.fit(model, dm)
    logged = trainer.validate(model, dm, verbose=False)[0]

    # each validation review scored on its own, in the order of the data, and its film from the file
    val = dm.reviews("val")
    probabilities = np.array(Predictor(model, dm.get_tokenizer(), 80).predict(val.texts))
    correct = (probabilities >= 0.5) == np.asarray(val.labels)
    films = [str(f) for f in val.groups]
    assert len(set(films)) >= 10 and 0 < correct.mean() < 1
    assert logged["val/acc"] == pytest.approx(correct.mean(), abs=1e-6)
    assert logged["val/acc_se"] == pytest.approx(by_hand(correct, films), rel=1e-5)
    # the films matter: as independent reviews (or any other grouping) the figure would be another one
    assert abs(by_hand(correct, range(len(films))) - by_hand(correct, films)) > 0.2 * by_hand(correct, films)


def test_a_linear_references_val_acc_se_is_clustered_by_film(films_file, cache_dir):
    from imdb_lightning.models.linear import LinearReference
    from imdb_lightning.tools.linear import figures, film_numbers

    dm = IMDBDataModule(train_files=films_file, cache_dir=cache_dir, val_fraction=0.3)
    train, val = dm.reviews("train"), dm.reviews("val")
    model = LinearReference("tfidf", C=0.01).fit(train.texts, train.labels)  # weak: some reviews wrong
    logits = model.logits(val.texts)
    correct = (logits >= 0) == np.asarray(val.labels)
    assert 0 < correct.mean() < 1
    result = figures(logits, np.asarray(val.labels), film_numbers(val), "val")
    assert result["val/acc"] == pytest.approx(correct.mean())
    assert result["val/acc_se"] == pytest.approx(by_hand(correct, [str(f) for f in val.groups]), rel=1e-12)
