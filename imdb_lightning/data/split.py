"""Validation carved out of the training reviews: at random, or by whole films.

IMDB's test films are disjoint from its training films, and most of one film's reviews share a
label, so a random validation split shares films with training and rewards recognising the film.
Holding out whole films measures what the test split measures.
"""

from __future__ import annotations

import numpy as np


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
