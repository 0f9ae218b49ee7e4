"""Validation carved out of the training reviews: at random, or by whole films.

IMDB's test films are disjoint from its training films, and most of one film's reviews share a
label, so a random validation split shares films with training and rewards recognising the film.
Holding out whole films measures what the test split measures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from ..errors import DataError

if TYPE_CHECKING:
    from .sources import Reviews


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: `fraction` of each label's reviews, drawn at random."""
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held.append(members[: int(round(fraction * len(members)))])
    val = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), val), val


def grouped_split(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices holding out whole groups (films) until each label has its share.

    Films are visited in a seeded random order and taken while no label overshoots its target
    (`fraction` of that label's reviews, within half a review), so the validation split keeps the
    data's label balance; most films are small, so the targets are met almost exactly.
    """
    names, group_of = np.unique(groups, return_inverse=True)
    classes, label_of = np.unique(labels, return_inverse=True)
    counts = np.zeros((len(names), len(classes)))  # (films, labels): reviews of each label per film
    np.add.at(counts, (group_of, label_of), 1)
    target = fraction * counts.sum(0)  # (labels,)
    taken, chosen = np.zeros(len(classes)), []
    for film in np.random.default_rng(seed).permutation(len(names)):
        if np.all(taken + counts[film] <= target + 0.5):
            chosen.append(film)
            taken += counts[film]
            if np.all(taken >= target - 0.5):
                break
    held = np.isin(group_of, chosen)
    return np.flatnonzero(~held), np.flatnonzero(held)


def carve_validation(data: Reviews, kind: str, fraction: float, seed: int, source_name: str,
                     group_column: Optional[str]) -> tuple[tuple[Reviews, Reviews], dict]:
    """((train, val) reviews, how validation was carved: kind, fraction, reviews, films), `kind` auto |
    grouped | random; every way the data cannot be split is a DataError that says what to change."""
    where = f"the training data ({len(data)} reviews)"
    if len(np.unique(data.labels)) < 2:
        raise DataError(f"{where} has only label {data.labels[0]}; it needs both classes")
    if kind == "auto":
        kind = "grouped" if data.groups is not None else "random"
        if data.groups is None and source_name != "synthetic":
            rank_zero_info(f"imdb-lightning: the {source_name} source does not say which film each review is of: "
                           "validation is a random split, which shares films with training and reads a little high")
    if kind == "grouped" and data.groups is None:
        raise DataError(f"data.val_split grouped needs the film of each review; the {source_name} source has none "
                        "(give data files a film column, see data.group_column, or use --data.val_split random)")
    if kind == "grouped":
        films = {g for g in data.groups if g is not None and str(g).strip() not in ("", "None", "nan")}
        if len(films) < 2:
            column = "urls_*.txt" if source_name == "aclimdb" else f"film column {group_column or 'movie'!r}"
            held = "is empty" if not films else f"names one film only ({next(iter(films))})"
            raise DataError(f"{where}: the {column} {held}, so validation cannot be carved by film; fill it, or use "
                            "--data.val_split random (a split by review, which shares films with training)")
        train, val = grouped_split(data.labels, data.groups, fraction, seed)
    else:
        train, val = stratified_split(data.labels, fraction, seed)
    if len(val) == 0 or len(train) == 0:
        empty = "validation" if len(val) == 0 else "training"
        films = f" from {len(np.unique(data.groups))} films" if kind == "grouped" else ""
        raise DataError(
            f"{where}{films}: data.val_fraction {fraction} leaves the {empty} split empty "
            f"({kind} split); use more reviews or change --data.val_fraction"
        )
    if len(np.unique(data.labels[train])) < 2:
        raise DataError(f"{where}: after holding out validation the training split has only one label; use more reviews")
    films = len(np.unique(data.groups[val])) if data.groups is not None else None
    return (data.subset(train), data.subset(val)), {"kind": kind, "fraction": fraction, "reviews": int(len(val)),
                                                    "films": films}
