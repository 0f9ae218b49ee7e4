"""Is a difference between two recipes established? Paired differences on the same validation reviews.

Two recipes validated on the same reviews share those reviews' luck: a film that is hard for one is
mostly hard for the other. Their difference is therefore judged review by review, not by setting
one run's ±interval against the other's. On one split the difference of per-review outcomes has a
cluster-robust standard error with films as clusters (reviews of one film succeed or fail
together); over several split seeds each split's difference is one sample, and Nadeau and Bengio's
corrected resampled t (Machine Learning 52, 2003) widens the naive standard error for the training
reviews those splits share. A difference is *established* where its 95% interval excludes zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Optional

import numpy as np

from ..runs import read_val_reviews
from ..standard_error import clustered_standard_error


@dataclass
class Difference:
    mean: float  # a − b, as a fraction of reviews
    se: float
    low: float  # the 95% interval
    high: float
    samples: int  # reviews (one split) or split seeds
    clusters: int  # films (one split) or split seeds
    method: str

    @property
    def established(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def verdict(self) -> str:
        return "established" if self.established else "not established"


def t_quantile(df: int, level: float = 0.95) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


NO_FILMS = "reviews, no film ids"


def clustered_difference(a, b, films) -> Difference:
    """a, b: each review's outcome under two recipes (1 right, 0 wrong, or a mean over a recipe's seeds),
    the same reviews in the same order; films: each review's film. The interval uses Student's t with
    (films − 1) degrees of freedom, as cluster-robust errors with few clusters should."""
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)  # (reviews,)
    films = np.asarray(films)
    clusters = len(np.unique(films))
    se = clustered_standard_error(diffs, films)
    mean = float(diffs.mean())
    half = t_quantile(clusters - 1) * se if clusters > 1 else float("nan")
    # (reviews with no film ids are their own clusters: then it is the plain paired error, and said so)
    method = "films as clusters" if clusters < len(diffs) else NO_FILMS
    return Difference(mean, se, mean - half, mean + half, len(diffs), clusters, method)


def corrected_resampled(split_diffs, test_fraction: float) -> Difference:
    """Nadeau–Bengio over split seeds: split_diffs holds each split's mean difference; test_fraction is
    validation reviews / training reviews of one split (1/9 for a 10% validation split). The variance of
    the mean is (1/J + test_fraction) × s², not s²/J: the J splits train on largely the same reviews."""
    diffs = np.asarray(split_diffs, dtype=float)
    splits = len(diffs)
    mean = float(diffs.mean())
    if splits < 2:
        return Difference(mean, float("nan"), float("nan"), float("nan"), splits, splits, "one split")
    se = math.sqrt((1 / splits + test_fraction) * diffs.var(ddof=1))
    half = t_quantile(splits - 1) * se
    return Difference(mean, se, mean - half, mean + half, splits, splits, f"corrected resampled t over {splits} splits")


@dataclass
class Outcomes:
    """One recipe's validation outcomes on one split: each review's correctness, averaged over the recipe's runs."""
    review: np.ndarray  # (reviews,) index within the split, sorted
    film: np.ndarray
    correct: np.ndarray


def recipe_outcomes(folders: list[Path]) -> dict[str, Outcomes]:
    """Per split (its digest), the reviews every one of these runs validated, each run's outcome averaged."""
    by_split: dict[str, list[dict]] = {}
    for folder in folders:
        saved = read_val_reviews(folder)
        if saved is not None:
            by_split.setdefault(saved["split"], []).append(saved)
    out = {}
    for split, saved in by_split.items():
        reviews = saved[0]["review"]
        for other in saved[1:]:
            reviews = np.intersect1d(reviews, other["review"])
        correct = np.zeros(len(reviews))
        for s in saved:
            rows = np.searchsorted(s["review"], reviews)
            correct += (s["prob"][rows] >= 0.5) == s["label"][rows]
        first = saved[0]
        out[split] = Outcomes(reviews, first["film"][np.searchsorted(first["review"], reviews)], correct / len(saved))
    return out


def compare_on_split(a: Outcomes, b: Outcomes) -> Difference:
    reviews = np.intersect1d(a.review, b.review)
    rows_a, rows_b = np.searchsorted(a.review, reviews), np.searchsorted(b.review, reviews)
    return clustered_difference(a.correct[rows_a], b.correct[rows_b], a.film[rows_a])


def compare_recipes(a: dict[str, Outcomes], b: dict[str, Outcomes], test_fraction: float) -> Optional[Difference]:
    """The difference a − b on the splits both validated on: one split's (films as clusters), or over two
    or more splits the corrected resampled t. None: they share no split."""
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    per_split = [compare_on_split(a[s], b[s]) for s in shared]
    return per_split[0] if len(per_split) == 1 else corrected_resampled([d.mean for d in per_split], test_fraction)


def pair_rows(recipes: list[tuple[str, list[Path], Optional[float]]], test_fraction: float = 1 / 9) -> list[dict]:
    """Every pair of recipes (label, run folders, mean test accuracy or None) that validated on shared reviews,
    in the order given (best first): their paired validation difference, its verdict, and the test difference."""
    outcomes = [(label, recipe_outcomes(folders), test) for label, folders, test in recipes]
    rows = []
    for (label_a, a, test_a), (label_b, b, test_b) in combinations(outcomes, 2):
        diff = compare_recipes(a, b, test_fraction) if a and b else None
        if diff is None:
            continue
        test = test_a - test_b if test_a is not None and test_b is not None else None
        held = None if test is None or not diff.established else (test > 0) == (diff.mean > 0)
        rows.append({"a": label_a, "b": label_b, "difference": diff, "test": test, "held_on_test": held})
    return rows


def format_rows(rows: list[dict]) -> list[str]:
    """The pairs as a Markdown table, in accuracy points."""
    lines = ["| a | b | val a − b | 95% interval | verdict | over | test a − b |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        d = row["difference"]
        interval = "" if d.low != d.low else f"{100 * d.low:+.2f} to {100 * d.high:+.2f}"
        over = {"films as clusters": f"{d.samples} reviews, {d.clusters} films",
                NO_FILMS: f"{d.samples} reviews (no film ids)"}.get(d.method, d.method)
        test = "" if row["test"] is None else f"{100 * row['test']:+.2f}"
        lines.append(f"| {row['a']} | {row['b']} | {100 * d.mean:+.2f} | {interval} | {d.verdict} | {over} | {test} |")
    return lines
