"""`imdb-lightning compare [LOGDIR]`: a leaderboard and plots from finished runs.

Runs that differ only by seed form one group (mean ± std over distinct seeds, and how many); with
`--over_splits`, runs that differ only by seed and `data.split_seed` do (mean ± std over split seeds,
and each group's paired difference to the best one on the splits they share).
Every accuracy names its split: validation (grouped by film, or random) or test, and comes from a
run's record (runs.py): a run's validation figure is its best checkpoint's, and its test figure the
newest test of that same checkpoint (by its digest), whichever run folder the test was recorded in;
leaderboard.md says which checkpoint and which test data each figure came from. Runs that crashed or
did not finish are listed apart, never averaged in.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Optional

from ..arguments import ArgumentParser
from ..errors import UserError
from ..models.hparams import encoder_name
from ..runs import RECORD, best_checkpoint, evaluations, read_record, run_settings, run_version
from .paired import format_rows, pair_rows

# Settings that say where or how a run was logged, not what was trained.
IGNORED = ("seed_everything", "trainer.logger", "trainer.callbacks", "trainer.enable_progress_bar", "data.cache_dir",
           "ckpt_path", "trainer.default_root_dir", "data.num_workers", "trainer.enable_model_summary", "config",
           "data.test_files", "model.pretrained", "data_settings", "weights_only")
STATS = ("val acc", "val ±95%", "test acc", "test f1", "test auroc")  # mean ± std over seeds in the csv
PAIRED = "val acc − best"  # (mean, standard error, splits ahead of the best, splits shared) in the csv
SPLIT_SEED = "data.split_seed"
Z95 = 1.96


@dataclass
class Run:
    folder: Path
    name: str
    settings: dict
    record: dict
    curves: dict = field(default_factory=dict)  # tag -> [(epoch, value)]
    evaluations: list = field(default_factory=list)  # evaluations of its checkpoints, from any run folder (runs.evaluations)

    def cost_s(self) -> Optional[float]:
        """The run's wall time, a stack's with its recurrent runs' (it cannot exist without them)."""
        return self.record.get("total_wall_s", self.record.get("wall_s")) if "checkpoints" in self.record \
            else self.record.get("wall_s")

    @property
    def kind(self) -> str:
        return self.record.get("kind", "fit")

    @property
    def status(self) -> str:
        return self.record.get("status", "unfinished")

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def val_split(self) -> str:
        return (self.record.get("validation") or {}).get("kind", "?")

    @property
    def seed(self):
        return self.record.get("seed", self.settings.get("seed_everything"))

    @property
    def split_seed(self):
        return self.settings.get(SPLIT_SEED)

    @property
    def encoder(self) -> str:
        """The encoder's name as the HParams tab and the encoder registry write it; a linear run's model."""
        path = self.settings.get("model.encoder.class_path")
        if path is None:
            return str(self.record.get("model") or self.settings.get("model.kind") or "")
        prefix = "model.encoder.init_args."
        return encoder_name({"class_path": path, "init_args": {k[len(prefix):]: v for k, v in self.settings.items()
                                                               if k.startswith(prefix)}})

    def val_interval(self) -> Optional[float]:
        """Half-width of the 95% interval of the best validation accuracy (film-clustered error)."""
        if "val_acc_se" in self.record:
            return Z95 * self.record["val_acc_se"]
        accs, errors = dict(self.curves.get("val/acc", [])), dict(self.curves.get("val/acc_se", []))
        if not accs or not errors:
            return None
        best = max(accs, key=accs.get)
        return Z95 * errors[best] if best in errors else None

    def test_evaluation(self) -> Optional[dict]:
        """The newest test of the checkpoint its validation figure belongs to (its best), with that
        checkpoint's own data settings; None when there is none. A test of an earlier best checkpoint
        (before a resume replaced it), or with the command line's data settings, is never its figure."""
        best = self.record.get("best_checkpoint") or {}
        tests = [e for e in self.evaluations if e.get("stage") == "test" and e.get("settings_from", "checkpoint") == "checkpoint"]
        if best.get("digest"):
            tests = [e for e in tests if (e.get("checkpoint") or {}).get("digest") == best["digest"]]
        else:  # a record from before checkpoints were named: its own test, or one of its best checkpoint file as it is now
            current = best_checkpoint(self.folder)
            tests = [e for e in tests if e.get("legacy") and e.get("checkpoint_file") is None and e.get("owner") == self.folder
                     or current is not None and e.get("checkpoint_file") is not None and same_file(e["checkpoint_file"], current)]
        return max(tests, key=lambda e: e["sort_time"], default=None)

    def test_figures(self) -> dict:
        evaluation = self.test_evaluation()
        return dict(evaluation["figures"]) if evaluation else {}

    def stale_tests(self) -> int:
        """Tests of this run's checkpoints that are not of its best one now (a resume replaced it)."""
        best = (self.record.get("best_checkpoint") or {}).get("digest")
        return sum(e.get("stage") == "test" and ((e.get("checkpoint") or {}).get("digest") != best or
                                                 e.get("settings_from", "checkpoint") != "checkpoint")
                   for e in self.evaluations) if best else 0


def same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def data_label(data: Optional[dict]) -> str:
    """Which reviews an evaluation read, in a few words: its files, folder, hub dataset or generated corpus."""
    if not data:
        return "(not recorded)"
    if data.get("files"):
        return "+".join(Path(f).name for f in data["files"])
    if data.get("aclimdb_dir"):
        return f"{Path(data['aclimdb_dir']).name}/{data.get('split', 'test')}"
    if data.get("hub_name"):
        return f"{data['hub_name']}:{data.get('split', 'test')}"
    synthetic = data.get("synthetic") or {}
    return f"synthetic {data.get('split', 'test')} (size {synthetic.get('size')}, seed {synthetic.get('seed')})"


def read_curves(folder: Path, tags=("val/acc", "val/loss", "val/acc_se")) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    available = set(events.Tags().get("scalars", []))
    epoch_of_step = {e.step: int(e.value) for e in events.Scalars("epoch")} if "epoch" in available else {}
    curves = {}
    for tag in tags:
        if tag in available:
            curves[tag] = [(epoch_of_step.get(e.step, i), e.value) for i, e in enumerate(events.Scalars(tag))]
    return curves


def find_runs(logdir: Path) -> list[Run]:
    """Fit runs (and linear references) of a log folder, each with every evaluation of its checkpoints,
    wherever it is recorded (its own run.json, or a `test`/`validate` run's)."""
    runs, found = [], []
    for config in sorted(logdir.glob("**/config.yaml"), key=lambda p: (p.parent.parent, run_version(p.parent) or 0)):
        folder = config.parent
        try:
            record = read_record(folder)
            settings = {k: v for k, v in run_settings(folder, record).items() if not k.startswith(IGNORED)}
            recorded = evaluations(folder, record)
        except (OSError, UserError) as err:
            print(f"compare: skipped {folder}: {' '.join(str(err).split())}")
            continue
        if not record and not list(folder.glob("events.out.tfevents.*")):
            continue
        written = (folder / RECORD).stat().st_mtime if (folder / RECORD).is_file() else 0.0
        for evaluation in recorded:  # (records from before evaluations had times: the record's own)
            evaluation.update(owner=folder, sort_time=evaluation.get("time") or
                              datetime.fromtimestamp(written, UTC).isoformat(timespec="microseconds"))
        if record.get("status", "finished") == "finished":
            found += recorded
        run = Run(folder, folder.parent.name, settings, record)
        if run.kind in ("test", "validate"):
            continue
        run.curves = read_curves(folder) if list(folder.glob("events.out.tfevents.*")) else {}
        runs.append(run)
    by_folder = {r.folder.resolve(): r for r in runs}
    for evaluation in found:
        checkpoint = evaluation["checkpoint_file"]
        # a fit's checkpoints are in its checkpoints/ folder; a linear run's model is in the run folder itself
        places = [checkpoint.parent.parent, checkpoint.parent] if checkpoint else [evaluation["owner"]]
        owner = next((by_folder[p.resolve()] for p in places if p.resolve() in by_folder), None)
        if owner is not None:
            owner.evaluations.append(evaluation)
    return runs


def measured(value) -> bool:
    """A figure to average: a finite number (a run.json may hold NaN, from a diverged run or a hand edit)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mean_std(values: list) -> tuple[float, float]:
    values = [v for v in values if measured(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")  # one value: no spread


def group(runs: list[Run], over_splits: bool = False) -> tuple[list[str], dict[tuple, list[Run]]]:
    """Group finished runs by name and every setting that varies among runs of one name (the seed aside,
    and the split seed with `over_splits`); settings that come with the name (cell, bidirectional) are
    not repeated as columns."""
    keys = sorted({k for r in runs for k in r.settings} - ({SPLIT_SEED} if over_splits else set()))
    names = {r.name for r in runs}
    varying = [
        k for k in keys
        if any(len({json.dumps(r.settings.get(k), default=str) for r in runs if r.name == n}) > 1 for n in names)
    ]
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.name, *(run.settings.get(k) for k in varying)), []).append(run)
    return varying, groups


def distinct_seeds(members: list[Run]) -> list[Run]:
    """One run per seed (and split seed), the newest: a repeated run of one seed is the same measurement,
    not another sample."""
    newest: dict = {}
    for run in sorted(members, key=lambda r: (r.folder.parent.name, run_version(r.folder) or 0)):
        newest[(run.split_seed, run.seed) if run.seed is not None else id(run)] = run
    return list(newest.values())


def per_split(members: list[Run]) -> dict:
    """Best val acc per split seed, the mean over that split's model seeds: a split is one sample."""
    accs: dict = {}
    for run in members:
        if measured(run.record.get("best_val_acc")):
            accs.setdefault(run.split_seed, []).append(run.record["best_val_acc"])
    return {split: statistics.fmean(values) for split, values in accs.items()}


def paired(accs: dict, best: dict) -> tuple:
    """Mean difference to the best group on the splits both were run on, its standard error over
    those splits, on how many of them this group was ahead, and how many there were."""
    shared = sorted(set(accs) & set(best), key=str)
    diffs = [accs[s] - best[s] for s in shared]
    if not diffs:
        return float("nan"), float("nan"), 0, 0
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return statistics.fmean(diffs), se, sum(d > 0 for d in diffs), len(diffs)


def leaderboard(runs: list[Run], over_splits: bool = False) -> tuple[list[str], list[list]]:
    finished = [r for r in runs if r.finished]
    varying, groups = group(finished, over_splits)
    header = ["model", "encoder", *[k.split(".")[-1] if k.count(".") else k for k in varying], "val split",
              *(["splits"] if over_splits else []), "seeds", "parameters",
              "val acc", "val ±95%", "test acc", "test f1", "test auroc", "test data", "epochs", "wall s", "train samples/s"]
    rows, split_accs = [], []
    for key, members in groups.items():
        members = distinct_seeds(members)
        stat = lambda get, members=members: mean_std([get(r) for r in members])
        tested = [e for e in (r.test_evaluation() for r in members) if e is not None]
        data = {(e.get("data") or {}).get("digest"): data_label(e.get("data")) for e in tested}
        # figures on other reviews are not one measurement: averaged only when every member read the same test data
        tests = [e["figures"] for e in tested] if len(data) == 1 else []
        splits = sorted({r.val_split for r in members})
        split_accs.append(per_split(members))
        # over splits, a split is the unit: the spread of one split's figure, not of model seeds within it
        val_acc = mean_std(list(split_accs[-1].values())) if over_splits else stat(lambda r: r.record.get("best_val_acc"))
        rows.append([
            key[0], members[0].encoder, *key[1:], "/".join(splits), *([len(split_accs[-1])] if over_splits else []),
            len({r.seed for r in members}), members[0].record.get("parameters"),
            val_acc, stat(lambda r: r.val_interval()),
            mean_std([t.get("test/acc") for t in tests]), mean_std([t.get("test/f1") for t in tests]),
            mean_std([t.get("test/auroc") for t in tests]),
            next(iter(data.values())) if len(data) == 1 else "differs: " + ", ".join(sorted(data.values())) if data else "",
            stat(lambda r: r.record.get("epochs"))[0], stat(lambda r: r.cost_s())[0],
            stat(lambda r: r.record.get("train_samples_per_s"))[0],
        ])
    best = header.index("val acc")
    order = sorted(range(len(rows)), key=lambda i: -rows[i][best][0] if rows[i][best][0] == rows[i][best][0] else float("inf"))
    rows, split_accs = [rows[i] for i in order], [split_accs[i] for i in order]  # best first, NaN last
    if over_splits:
        header.insert(best + 1, PAIRED)
        for row, accs in zip(rows, split_accs):
            row.insert(best + 1, paired(accs, split_accs[0]))
    return header, rows


def provenance(runs: list[Run], logdir: Path, over_splits: bool = False) -> list[str]:
    """One line per run counted in the leaderboard: which checkpoint and which data each of its figures came from."""
    here = lambda path: os.path.relpath(path, logdir)  # noqa: E731
    _, groups = group([r for r in runs if r.finished], over_splits)
    lines = []
    for members in groups.values():
        for run in distinct_seeds(members):
            best = run.record.get("best_checkpoint") or {}
            file = best_checkpoint(run.folder)
            checkpoint = (f"{here(file)} ({best['digest'][:19]}...)" if best.get("digest") and file else
                          f"{here(file)} (digest not recorded)" if file else "(no checkpoint)")
            value = run.record.get("best_val_acc")
            line = f"- {here(run.folder)}: val acc {value:.4f} of {checkpoint}" if value is not None else \
                f"- {here(run.folder)}: {checkpoint}"
            test = run.test_evaluation()
            if test is not None:
                data = test.get("data") or {}
                digest = f", {data['digest'][:19]}..., {data.get('reviews')} reviews" if data.get("digest") else ""
                line += (f"; test acc {test['figures'].get('test/acc', float('nan')):.4f} of that checkpoint on "
                         f"{data_label(data)}{digest}, in {here(test['owner'] / RECORD)}")
            stale = run.stale_tests()
            if stale and test is None:
                line += (f"; its {stale} test(s) were of an earlier best checkpoint (a resume replaced it) or with other data "
                         "settings: test its best checkpoint again")
            elif stale:
                line += f"; {stale} other test(s) not counted (of an earlier best checkpoint, or with other data settings)"
            lines.append(line)
    return lines


def fmt(value, column: str = "") -> str:
    if column == PAIRED:
        mean, se, ahead, n = value
        if mean != mean:
            return ""
        return f"{mean:+.4f}" + (f" ± {se:.4f}" if se == se else "") + f" (ahead on {ahead} of {n})"
    if isinstance(value, tuple):
        mean, std = value
        if mean != mean:
            return ""
        if column == "val ±95%":
            return f"±{mean:.4f}"
        return f"{mean:.4f}" if std != std else f"{mean:.4f} ± {std:.4f}"  # one seed: no spread measured
    if isinstance(value, float):
        return "" if value != value else f"{value:.1f}"
    return "" if value is None else str(value)


def pyplot():
    """matplotlib.pyplot drawing to files only (no display needed): these plots and the lab's (memory, forecast)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(runs: list[Run], out: Path, over_splits: bool = False) -> list[Path]:
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    # linear runs are fitted once, not per epoch: they are points in the cost plot only
    finished = [r for r in runs if r.finished and r.curves and r.kind != "linear"]
    _, groups = group(finished, over_splits)
    written = []
    for tag, file in (("val/acc", "val_acc.png"), ("val/loss", "val_loss.png")) if finished else ():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for key, members in groups.items():
            curves = [dict(r.curves.get(tag, [])) for r in distinct_seeds(members)]
            epochs = sorted(set().union(*curves))
            if not epochs:
                continue
            table = np.array([[c.get(e, np.nan) for e in epochs] for c in curves])  # (seeds, epochs)
            label = " ".join(str(k) for k in key) + f" (n={len(curves)})"
            line = ax.plot(np.array(epochs) + 1, np.nanmean(table, 0), marker="o", label=label)[0]
            ax.fill_between(np.array(epochs) + 1, np.nanmin(table, 0), np.nanmax(table, 0), alpha=0.2, color=line.get_color())
        ax.set(xlabel="epoch", ylabel=tag,
               title=f"{tag} per epoch: mean over seeds{' and splits' if over_splits else ''}, band = min to max")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / file, dpi=110)
        plt.close(fig)
        written.append(out / file)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _, all_groups = group([r for r in runs if r.finished], over_splits)
    for key, members in all_groups.items():
        members = distinct_seeds(members)
        ax.scatter([r.cost_s() for r in members], [r.record.get("best_val_acc") for r in members],
                   label=" ".join(str(k) for k in key))
    ax.set(xlabel="wall time of the run (s)", ylabel="best validation accuracy", title="accuracy against cost, one point per run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "acc_vs_time.png", dpi=110)
    plt.close(fig)
    return written + [out / "acc_vs_time.png"]


def csv_columns(header: list[str]) -> list[str]:
    columns = []
    for h in header:
        if h == PAIRED:
            columns += [f"{h} mean", f"{h} se", f"{h} splits ahead", f"{h} splits shared"]
        else:
            columns += [f"{h} mean", f"{h} std"] if h in STATS else [h]
    return columns


def paired_differences(runs: list[Run], over_splits: bool = False) -> list[dict]:
    """Each pair of rows that validated on the same reviews: their paired difference, established or not,
    from the runs' per-review outcomes (val_reviews.npz; tools/paired.py), and their test difference."""
    _, groups = group([r for r in runs if r.finished], over_splits)
    recipes = []
    for key, members in groups.items():
        members = distinct_seeds(members)
        accs = [r.record["best_val_acc"] for r in members if r.record.get("best_val_acc") is not None]
        tests = [t for t in (r.test_figures().get("test/acc") for r in members) if t is not None]
        recipes.append((statistics.fmean(accs) if accs else float("-inf"), " ".join(str(k) for k in key),
                        [r.folder for r in members], statistics.fmean(tests) if tests else None))
    recipes.sort(key=lambda recipe: -recipe[0])  # best first, as the leaderboard
    fraction = next(((r.record.get("validation") or {}).get("fraction") for r in runs
                     if (r.record.get("validation") or {}).get("fraction")), 0.1)
    return pair_rows([recipe[1:] for recipe in recipes], test_fraction=fraction / (1 - fraction))


PAIRS_NOTE = ("Paired differences: each pair of rows on the validation reviews both were scored on, review by review "
              "(a row's seeds averaged per review). On one split the 95% interval treats films as clusters; over several "
              "split seeds it is Nadeau and Bengio's corrected resampled t, since the splits share training reviews. "
              "Established: the interval excludes zero. test a − b: the rows' mean test accuracies, for reading only; "
              "choose on validation. Runs saved before per-review outcomes were (no val_reviews.npz) are not paired.")


def write_pairs(pairs: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "val a-b", "se", "low 95%", "high 95%", "verdict", "method", "samples", "clusters",
                         "test a-b"])
        for p in pairs:
            d = p["difference"]
            writer.writerow([p["a"], p["b"], d.mean, d.se, d.low, d.high, d.verdict, d.method, d.samples, d.clusters, p["test"]])


def compare(logdir: str | Path, out: str | Path | None = None, over_splits: bool = False) -> dict:
    logdir = Path(logdir)
    if not logdir.is_dir():
        raise UserError(f"{logdir}: no such log folder")
    runs = find_runs(logdir)
    if not runs:
        raise UserError(f"{logdir}: no runs found (a run folder holds config.yaml and run.json or TensorBoard events)")
    out = Path(out or logdir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot write there ({err.strerror or err})") from err
    header, rows = leaderboard(runs, over_splits)
    with open(out / "leaderboard.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(csv_columns(header))
        for row in rows:
            writer.writerow([c for v in row for c in (v if isinstance(v, tuple) else (v,))])
    lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
    lines += [f"| {' | '.join(fmt(v, h) for v, h in zip(row, header))} |" for row in rows]
    lines += ["", "val acc: best validation accuracy of each run (mean ± std over distinct seeds), on the split named in "
              "`val split` (grouped: whole films held out, as the test split's films are unseen; random: reviews held "
              "out, which shares films with training and reads high). val ±95%: half-width of the 95% interval of one "
              "run's val acc, from its film-clustered standard error. test: the held-out test split."]
    if over_splits:
        lines += ["", "Over splits: each split seed is one sample (its model seeds averaged first); val acc is the "
                  "mean ± std over split seeds, `splits` how many. val acc − best: the difference to the top row on "
                  "the split seeds both were run on, ± its standard error over them, and on how many this row was "
                  "ahead: pairing by split, a row run only on easy splits gains nothing from them."]
    pairs = paired_differences(runs, over_splits)
    if pairs:
        lines += ["", *format_rows(pairs), "", PAIRS_NOTE]
        write_pairs(pairs, out / "pairs.csv")
    lines += ["", "Where each figure comes from (run: its best checkpoint, the validation figure it had; the test of that "
              "same checkpoint, its data, and the record it is in):", ""]
    lines += provenance(runs, logdir, over_splits)
    others = [r for r in runs if not r.finished]
    if others:
        lines += ["", "Runs not counted above:", ""]
        lines += [f"- {r.folder}: {r.status}" + (f" ({r.record['error']})" if r.record.get("error") else "") for r in others]
    (out / "leaderboard.md").write_text("\n".join(lines) + "\n")
    plots = plot(runs, out, over_splits) if any(r.finished for r in runs) else []
    return {"runs": len(runs), "finished": sum(r.finished for r in runs), "rows": rows, "header": header, "pairs": pairs,
            "leaderboard": out / "leaderboard.md", "plots": plots}


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="imdb-lightning compare", description=__doc__.splitlines()[0])
    parser.add_argument("logdir", nargs="?", default="lightning_logs")
    parser.add_argument("--out", help="where leaderboard.md/.csv and the plots go (default: LOGDIR)")
    parser.add_argument("--over_splits", action="store_true",
                        help="pool runs that differ only by data.split_seed (and seed): mean ± std over split seeds, "
                             "and each row's paired difference to the best row")
    opts = parser.parse_args(argv)
    result = compare(opts.logdir, opts.out, opts.over_splits)
    print(result["leaderboard"].read_text())
    print(f"{result['finished']} finished of {result['runs']} runs; wrote {result['leaderboard']}, "
          + ", ".join(str(p) for p in result["plots"]))
