"""The standard error of an accuracy over reviews that come in films: the classifier's `acc_se`, the linear
references' and the paired differences of tools/paired.py all use it."""

from __future__ import annotations

import numpy as np


def clustered_standard_error(correct, groups) -> float:
    """Standard error of an accuracy whose reviews come in correlated clusters (films).

    The cluster-robust (sandwich) estimate: reviews of one film succeed or fail together, so a
    split of 2,500 reviews from ~340 films is noisier than 2,500 independent reviews would be.
    """
    n = len(correct)
    if n < 2:
        return float("nan")
    _, cluster = np.unique(groups, return_inverse=True)
    clusters = cluster.max() + 1
    if clusters < 2:
        return float("nan")
    residuals = np.bincount(cluster, weights=correct - correct.mean())  # (clusters,)
    return float(np.sqrt(clusters / (clusters - 1) * np.sum(residuals**2)) / n)
