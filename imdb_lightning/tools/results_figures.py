"""What the results file says: the table's figures, what a recipe costs, how validation ranked the
recipes against test, and which differences are established (tools/paired.py)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Optional

from ..runs import VAL_REVIEWS
from .paired import Difference, compare_recipes, corrected_resampled, recipe_outcomes

TEST_FRACTION = 1 / 9  # validation reviews / training reviews of a 10% split (Nadeau–Bengio's correction)
NOT_KEPT = "record not kept"


@dataclass
class Entry:
    """A recipe of the table: the figures of its runs on split 0 that were tested, one per model seed."""
    key: str
    recipe: dict
    runs: list[dict] = field(default_factory=list)

    @property
    def first(self) -> dict:
        return self.runs[0]

    @property
    def val_mean(self) -> float:
        return statistics.fmean(r["val"] for r in self.runs)

    @property
    def test_mean(self) -> float:
        return statistics.fmean(r["test"] for r in self.runs)

    @property
    def seeds(self) -> list:
        return [r["seed"] for r in self.runs]


def grouped(run: dict) -> bool:
    """Validated on held-out films (the published kind); runs on a random split are kept for comparing the kinds."""
    return run.get("validation", "grouped") == "grouped"


def kept(run: dict) -> bool:
    return run.get("record", NOT_KEPT) != NOT_KEPT


def tested_runs(data: dict, key: str) -> list[dict]:
    """The recipe's tested runs on split 0, one per model seed: a run whose record is kept before one whose
    is not, then the first entered."""
    runs = [r for r in data["runs"] if r["recipe"] == key and r["split"] == 0 and r.get("test") is not None
            and r.get("val") is not None and grouped(r)]
    by_seed: dict = {}
    for run in sorted(runs, key=lambda r: not kept(r)):
        by_seed.setdefault(run["seed"], run)
    order = {id(r): i for i, r in enumerate(data["runs"])}
    # the table's figure: seed 0's (a linear model has none), else the seed tested first; the others by seed
    runs = sorted(by_seed.values(), key=lambda r: (r["seed"] not in (0, None), order[id(r)]))
    return runs[:1] + sorted(runs[1:], key=lambda r: r["seed"])


def table(data: dict) -> list[Entry]:
    """The table's recipes, best on validation first (the mean over their tested seeds)."""
    entries = [Entry(key, recipe, tested_runs(data, key)) for key, recipe in data["recipes"].items() if recipe.get("table")]
    return sorted([e for e in entries if e.runs], key=lambda e: -e.val_mean)


# --- what a recipe costs --------------------------------------------------------------------------

def chain(data: dict, key: str) -> list[str]:
    """The recipe and what it needs first (a language model, a recurrent run), needs first."""
    out = []
    for need in data["recipes"][key].get("needs", []):
        out += [k for k in chain(data, need) if k not in out]
    return out + [key]


@dataclass
class Cost:
    machine: str
    parts: list[tuple[str, float, str]]  # (recipe, minutes, timing)

    @property
    def minutes(self) -> float:
        return sum(p[1] for p in self.parts)

    @property
    def alone(self) -> bool:
        return all(p[2] == "alone" for p in self.parts)


def cost_on(data: dict, key: str, machine: str) -> Optional[Cost]:
    """Each part's fastest run alone on this machine, else its fastest run there; None if a part never ran there."""
    parts = []
    for part in chain(data, key):
        runs = [r for r in data["runs"] if r["recipe"] == part and r["machine"] == machine and r.get("minutes")]
        if not runs:
            return None
        alone = [r for r in runs if r["timing"] == "alone"]
        best = min(alone or runs, key=lambda r: r["minutes"])
        parts.append((part, best["minutes"], best["timing"]))
    return Cost(machine, parts)


def cost(data: dict, entry: Entry) -> Optional[Cost]:
    """On the machine of the table's figure if every part was timed alone there, else on the machine where
    they all were (the quickest), else on the figure's machine as timed."""
    costs = {m: c for m in data["machines"] if (c := cost_on(data, entry.key, m))}
    home = costs.get(entry.first["machine"])
    if home and home.alone:
        return home
    alone = [c for c in costs.values() if c.alone]
    return min(alone, key=lambda c: c.minutes) if alone else home or next(iter(costs.values()), None)


# --- validation against test ----------------------------------------------------------------------

def kendall(entries: list[Entry]) -> tuple[float, float]:
    from scipy.stats import kendalltau

    result = kendalltau([e.first["val"] for e in entries], [e.first["test"] for e in entries])
    return float(result.statistic), float(result.pvalue)


def offsets(entries: list[Entry]) -> dict[str, float]:
    return {e.key: round(e.first["test"] - e.first["val"], 2) for e in entries}


def misranked(entries: list[Entry]) -> list[tuple[Entry, Entry, float, float]]:
    """Pairs whose order on validation (the table's figures) is the other way round on test: (higher on
    validation, lower, val difference, test difference)."""
    out = []
    for a, b in combinations(entries, 2):
        if a.first["val"] < b.first["val"]:
            a, b = b, a
        val, test = a.first["val"] - b.first["val"], a.first["test"] - b.first["test"]
        if val > 0 and test < 0:
            out.append((a, b, round(val, 2), round(test, 2)))
    return sorted(out, key=lambda m: m[2])


# --- which differences are established --------------------------------------------------------------

def series(data: dict, key: str) -> dict[str, dict[int, float]]:
    """Val grouped per split seed, per machine (a split is one sample: its model seeds averaged). A linear
    model's figures do not depend on the machine: one series, under "*"."""
    linear = data["recipes"][key].get("kind") == "linear"
    values: dict[str, dict[int, list[float]]] = {}
    for run in data["runs"]:
        if run["recipe"] == key and run.get("val") is not None and grouped(run):
            values.setdefault("*" if linear else run["machine"], {}).setdefault(run["split"], []).append(run["val"])
    return {m: {s: statistics.fmean(v) for s, v in splits.items()} for m, splits in values.items()}


def series_difference(data: dict, a: str, b: str) -> Optional[Difference]:
    """a − b over the split seeds both ran on one machine (any, for a linear model): the corrected resampled t
    over the splits, in points. None under two shared splits."""
    sa, sb = series(data, a), series(data, b)
    best: list = []
    for machine in {*sa, *sb} - {"*"} or {"*"}:
        one, other = sa.get(machine) or sa.get("*", {}), sb.get(machine) or sb.get("*", {})
        shared = sorted(set(one) & set(other))
        if len(shared) > len(best):
            best = [one[s] - other[s] for s in shared]
    return corrected_resampled(best, TEST_FRACTION) if len(best) >= 2 else None


def record_folders(data: dict, key: str, root: Path, splits=None) -> list[Path]:
    """The kept records with per-review outcomes of a recipe's grouped runs (on these split seeds, if named)."""
    return [root / r["record"] for r in data["runs"]
            if r["recipe"] == key and kept(r) and grouped(r) and (root / r["record"] / VAL_REVIEWS).is_file()
            and (splits is None or r["split"] in splits)]


def in_points(diff: Difference) -> Difference:
    return Difference(100 * diff.mean, 100 * diff.se, 100 * diff.low, 100 * diff.high, diff.samples, diff.clusters,
                      diff.method)


def record_pairs(data: dict, keys: list[str], root: Path, splits=None) -> list[tuple[str, str, Difference]]:
    """Each pair of these recipes judged from their kept records alone (in points), the higher first."""
    outcomes = {k: recipe_outcomes(record_folders(data, k, root, splits)) for k in keys}
    out = []
    for a, b in combinations([k for k in keys if outcomes[k]], 2):
        diff = compare_recipes(outcomes[a], outcomes[b], TEST_FRACTION)
        if diff is None:
            continue
        if diff.mean < 0:
            a, b, diff = b, a, Difference(-diff.mean, diff.se, -diff.high, -diff.low, diff.samples, diff.clusters, diff.method)
        out.append((a, b, in_points(diff)))
    return sorted(out, key=lambda p: -p[2].mean)


def verdict(data: dict, a: str, b: str, root: Path) -> Optional[tuple[Difference, str]]:
    """a − b on validation, in points, and what it rests on: the kept records' per-review outcomes (films as
    clusters on one split; over several, the corrected resampled t), else the split series' figures."""
    folders_a, folders_b = record_folders(data, a, root), record_folders(data, b, root)
    if folders_a and folders_b:
        diff = compare_recipes(recipe_outcomes(folders_a), recipe_outcomes(folders_b), TEST_FRACTION)
        if diff is not None:
            return in_points(diff), "per-review outcomes"
    diff = series_difference(data, a, b)
    return (diff, "split seeds") if diff is not None else None


def pair_verdicts(data: dict, entries: list[Entry], root: Path) -> list[dict]:
    """Every pair of the table's recipes that can be judged, higher on validation first, with its test difference."""
    out = []
    for a, b in combinations(entries, 2):
        found = verdict(data, a.key, b.key, root)
        if found is None:
            continue
        diff, basis = found
        if diff.mean < 0:
            a, b = b, a
            diff = Difference(-diff.mean, diff.se, -diff.high, -diff.low, diff.samples, diff.clusters, diff.method)
        test = round(a.test_mean - b.test_mean, 2)
        out.append({"a": a, "b": b, "difference": diff, "basis": basis, "test": test,
                    "held": (test > 0) if diff.established else None})
    return out
