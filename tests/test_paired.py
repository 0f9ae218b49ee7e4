"""Paired differences on the same validation reviews: the statistics on cases worked by hand, the per-review
outcomes every fit and linear run saves, and `compare`'s verdict per pair."""

import csv
import json

import numpy as np
import pytest

from conftest import QUICKSTART, SMALL
from imdb_lightning.cli import cli_main
from imdb_lightning.runs import read_record, read_val_reviews, write_val_reviews
from imdb_lightning.tools.compare import compare
from imdb_lightning.tools.paired import clustered_difference, corrected_resampled

T_975 = {2: 4.302653, 3: 3.182446, 4: 2.776445}  # Student's t, 97.5th percentile, from a printed table


def test_films_as_clusters_widen_an_interval_that_reviews_alone_would_call_established():
    # 4 films of 4 reviews: a − b is +1 on every review of films A, B, C and −1 on every review of film D
    diffs = np.array([1] * 12 + [-1] * 4)
    films = np.repeat(np.arange(4), 4)
    d = clustered_difference(np.clip(diffs, 0, 1), np.clip(-diffs, 0, 1), films)
    # by hand: mean 8/16 = 0.5; film sums of (d − 0.5): 2, 2, 2, −6; sqrt(4/3 × 48) / 16 = 0.5
    assert d.mean == pytest.approx(0.5) and d.se == pytest.approx(0.5)
    assert (d.low, d.high) == pytest.approx((0.5 - T_975[3] * 0.5, 0.5 + T_975[3] * 0.5), abs=1e-5)
    assert d.clusters == 4 and d.samples == 16 and not d.established
    # as 16 independent reviews the same figures would pass: 0.5 ± 1.96 × sqrt(0.8 / 16) = 0.06 to 0.94
    assert 0.5 - 1.96 * (0.8 / 16) ** 0.5 > 0


def test_a_consistent_difference_over_films_is_established():
    # 5 films of 2 reviews: a − b = (1, 1) on four films, (1, 0) on the fifth
    diffs = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0])
    d = clustered_difference(diffs, np.zeros(10), np.repeat(np.arange(5), 2))
    # by hand: mean 0.9; film sums of (d − 0.9): 0.2 four times, −0.8; sqrt(5/4 × 0.8) / 10 = 0.1
    assert d.mean == pytest.approx(0.9) and d.se == pytest.approx(0.1)
    assert d.low == pytest.approx(0.9 - T_975[4] * 0.1, abs=1e-5) and d.established


def test_the_corrected_resampled_t_widens_for_the_training_reviews_splits_share():
    # three splits' differences 0.35, 0.75, 0.55 points; validation is 1/9 of training
    d = corrected_resampled([0.0035, 0.0075, 0.0055], test_fraction=1 / 9)
    # by hand: s² = (0.002² + 0.002² + 0) / 2 = 4e-6; (1/3 + 1/9) × 4e-6 = 1.7778e-6; se = 1.3333e-3
    assert d.mean == pytest.approx(0.0055) and d.se == pytest.approx(1.3333e-3, rel=1e-4)
    assert d.low == pytest.approx(0.0055 - T_975[2] * 1.3333e-3, rel=1e-3) and not d.established
    # the naive t (s²/3: se 1.1547e-3) would have called it: 0.0055 − 4.3027 × 1.1547e-3 > 0
    assert 0.0055 - T_975[2] * (4e-6 / 3) ** 0.5 > 0
    assert corrected_resampled([0.004, 0.006], 1 / 9).method == "corrected resampled t over 2 splits"
    assert not corrected_resampled([0.01], 1 / 9).established  # one split: no spread, no verdict


def fake_run(root, name, correct, films, split="s0", split_seed=0, test=None, label_of=None):
    """A finished run folder whose best epoch got `correct` (0/1 per review) right."""
    folder = root / name / f"version_{split_seed}"
    folder.mkdir(parents=True)
    correct = np.asarray(correct)
    labels = np.ones(len(correct), dtype=int) if label_of is None else label_of
    probs = np.where(correct == 1, labels, 1 - labels) * 0.8 + 0.1  # 0.9 where it says the label, else 0.1
    write_val_reviews(folder, np.arange(len(correct)), films, labels, probs, split, epoch=1)
    (folder / "config.yaml").write_text(f"seed_everything: 0\ndata:\n  split_seed: {split_seed}\n")
    record = {"status": "finished", "seed": 0, "best_val_acc": float(correct.mean()), "epochs": 2,
              "validation": {"kind": "grouped", "fraction": 0.1}}
    if test is not None:
        record["test"] = {"test/acc": test}
    (folder / "run.json").write_text(json.dumps(record))


def test_compare_says_which_differences_are_established(tmp_path, capsys):
    films = np.repeat(np.arange(5), 2)
    b = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    c = b + np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0])
    fake_run(tmp_path, "a", np.ones(10), films, test=0.95)
    fake_run(tmp_path, "b", b, films, test=0.90)
    fake_run(tmp_path, "c", c, films, test=0.91)
    fake_run(tmp_path, "other_split", np.ones(10), films, split="s1")  # other reviews: paired with none

    result = compare(tmp_path, tmp_path / "out")
    verdicts = {(p["a"], p["b"]): p["difference"] for p in result["pairs"]}
    assert set(verdicts) == {("a", "c"), ("a", "b"), ("c", "b")}  # best first, as the leaderboard
    # a − c: +0.5, film sums of (d − 0.5) −1, 0, 1, 0, 0: se sqrt(5/4 × 2) / 10 = 0.15811 — established
    assert verdicts["a", "c"].se == pytest.approx(0.15811, abs=1e-5) and verdicts["a", "c"].established
    # c − b: +0.4, film sums 1.2, 0.2, −0.8, 0.2, −0.8: se sqrt(5/4 × 2.8) / 10 = 0.18708 — not established
    assert verdicts["c", "b"].se == pytest.approx(0.18708, abs=1e-5) and not verdicts["c", "b"].established
    assert verdicts["a", "b"].mean == pytest.approx(0.9) and verdicts["a", "b"].established
    assert {(p["a"], p["b"]): p["test"] for p in result["pairs"]}["a", "b"] == pytest.approx(0.05)

    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "| c | b | +40.00 | " in board and "| not established | 10 reviews, 5 films | +1.00 |" in board
    with open(tmp_path / "out" / "pairs.csv") as f:
        rows = {(r["a"], r["b"]): r["verdict"] for r in csv.DictReader(f)}
    assert rows == {("a", "c"): "established", ("a", "b"): "established", ("c", "b"): "not established"}


def test_compare_over_splits_pools_each_splits_paired_difference(tmp_path):
    films = np.repeat(np.arange(200), 10)
    for split, wins in enumerate([7, 15, 11]):  # x right where y is wrong on 7, 15, 11 of 2,000 reviews
        y = np.ones(2000)
        y[:wins] = 0
        fake_run(tmp_path, "x", np.ones(2000), films, split=f"s{split}", split_seed=split)
        fake_run(tmp_path, "y", y, films, split=f"s{split}", split_seed=split)
    (pair,) = compare(tmp_path, over_splits=True)["pairs"]
    d = pair["difference"]
    assert d.mean == pytest.approx(0.0055) and d.se == pytest.approx(1.3333e-3, rel=1e-4)  # as worked above
    assert d.method == "corrected resampled t over 3 splits" and not d.established


def test_a_fit_and_a_linear_run_save_their_outcomes_and_pair_on_the_same_reviews(tmp_path, cache_dir):
    logs = tmp_path / "logs"
    cli_main(["fit", "--config", str(QUICKSTART), *SMALL, "--trainer.max_epochs", "2", "--data.cache_dir", cache_dir,
              "--trainer.logger.init_args.save_dir", str(logs)])
    fit = next(logs.glob("*/version_0"))
    saved, record = read_val_reviews(fit), read_record(fit)
    right = (saved["prob"] >= 0.5) == saved["label"]
    assert right.mean() == pytest.approx(record["best_val_acc"], abs=1e-6)  # the best epoch's outcomes
    assert len(np.unique(saved["review"])) == len(saved["review"]) > 0

    data = [a for i in range(0, len(SMALL), 2) if SMALL[i].startswith("--data.") for a in SMALL[i:i + 2]]
    cli_main(["linear", "--models", "nbsvm", "--config", str(QUICKSTART), *data, "--data.cache_dir", cache_dir,
              "--logdir", str(logs)])
    linear = next(logs.glob("linear_nbsvm/version_0"))
    outcomes = read_val_reviews(linear)
    assert outcomes["split"] == saved["split"]  # the same split: the same digest
    assert ((outcomes["prob"] >= 0.5) == outcomes["label"]).mean() == pytest.approx(read_record(linear)["best_val_acc"])
    assert outcomes["review"].tolist() == list(range(len(outcomes["review"])))
    (pair,) = compare(logs)["pairs"]
    assert pair["difference"].samples == len(saved["review"])  # the reviews both validated (SMALL validates 2 batches)


def test_reviews_with_no_film_ids_are_not_called_films():
    from imdb_lightning.tools.paired import NO_FILMS, clustered_difference, format_rows

    a, b = [1, 0, 1, 1], [0, 0, 1, 0]
    assert clustered_difference(a, b, ["f1", "f1", "f2", "f2"]).method == "films as clusters"
    alone = clustered_difference(a, b, ["0", "1", "2", "3"])  # each review its own cluster
    assert alone.method == NO_FILMS
    row = format_rows([{"a": "x", "b": "y", "difference": alone, "test": None}])[-1]
    assert "4 reviews (no film ids)" in row and "films |" not in row
