"""`imdb-lightning tune`: an Optuna study over a recipe's settings, scored on film-grouped validation.

A search space is a YAML of dotted config keys and distributions (experiments/search/). The study
lives in a database (`--storage`: a SQLite file in the log folder by default, any SQLAlchemy URL for
workers on several machines): every `tune` started with the same storage and study name joins it,
takes the next trial, and a worker that dies mid-trial is noticed by its missing heartbeat and its
trial run again (from its last.ckpt) by another. Every trial is a run folder
(`<logdir>/<study>/version_<trial>`) whose run.json says the trial's number, parameters and state.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import yaml

from ..errors import UserError
from ..helpers import ArgumentParser, check_seed, comma_list
from ..models.encoders import ENCODERS
from ..runs import best_checkpoint, last_checkpoint, read_record, write_record
from ..training import load_yaml, read_config
from .studies import load_study, open_storage
from .sweep import encoder_configs, override_flags, run_one

DISTRIBUTIONS = {"uniform": "a float in [low, high]", "log_uniform": "a float in [low, high], log scale",
                 "int": "an integer in [low, high] (step: optional)", "choice": "one of a list"}
MONITOR = "val/acc"


def read_space(path: str) -> dict:
    """{dotted key: optuna distribution} from a search-space YAML; a bad entry is one line naming it."""
    import optuna.distributions as d

    try:
        raw = load_yaml(path)  # (its messages name the file, line and column)
    except UserError as err:
        if "holds no settings" not in str(err):
            raise
        raise UserError(f"{path}: an empty search space; give `dotted.key: {{uniform: [low, high]}}` lines") from err
    space = {}
    for key, spec in raw.items():
        where = f"{path}: {key}"
        if key == "base" or not isinstance(spec, dict) or len(set(spec) - {"step", "log"}) != 1:
            raise UserError(f"{where}: write one distribution, e.g. {{log_uniform: [1.0e-4, 3.0e-3]}} "
                            f"({', '.join(DISTRIBUTIONS)})")
        kind = next(k for k in spec if k not in ("step", "log"))
        value = spec[kind]
        if kind not in DISTRIBUTIONS:
            raise UserError(f"{where}: unknown distribution {kind!r}; the distributions are {', '.join(DISTRIBUTIONS)}")
        if kind == "choice":
            if not isinstance(value, list) or not value:
                raise UserError(f"{where}: choice needs a non-empty list")
            space[key] = d.CategoricalDistribution(value)
            continue
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
                and value[0] < value[1]):
            raise UserError(f"{where}: {kind} needs [low, high] with low < high, got {value!r}")
        low, high = value
        if kind == "int":
            if not all(isinstance(v, int) for v in value):
                raise UserError(f"{where}: int needs whole numbers, got {value!r}")
            space[key] = d.IntDistribution(low, high, step=spec.get("step", 1), log=bool(spec.get("log", False)))
        else:
            if kind == "log_uniform" and low <= 0:
                raise UserError(f"{where}: log_uniform needs low > 0, got {low}")
            space[key] = d.FloatDistribution(float(low), float(high), log=kind == "log_uniform")
    return space


def suggest(trial, key: str, dist):
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, log=dist.log)


def nested(params: dict) -> dict:
    """{"model.dropout": 0.3} -> {"model": {"dropout": 0.3}}."""
    out: dict = {}
    for key, value in params.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def trial_flags(params: dict) -> list[str]:
    return [a for key, value in params.items() for a in (f"--{key}", json.dumps(value) if isinstance(value, str) else
                                                         str(value).lower() if isinstance(value, bool) else str(value))]


class Tuner:
    """One encoder's study: its configs, space and runs."""

    def __init__(self, encoder: Optional[str], configs: list[str], preset: list[str], space: dict, overrides: list[str],
                 logdir: Path, study_name: str, split_seeds: Optional[list[int]], prune: bool):
        self.encoder, self.configs, self.preset, self.space, self.logdir = encoder, configs, preset, space, logdir
        self.flags, self.study_name = override_flags(overrides), study_name
        self.split_seeds, self.prune = split_seeds, prune
        self.test_files = [v for item in overrides for k, _, v in [item.partition("=")] if k == "data.test_files"]

    def args(self, params: dict, name: str, seed: int = 0) -> list[str]:
        return [*[a for c in self.configs for a in ("--config", c)], *self.preset,
                "--seed_everything", str(seed), "--trainer.logger.init_args.save_dir", str(self.logdir),
                "--trainer.logger.init_args.name", name, *self.flags, *trial_flags(params)]

    def run_name(self, split_seed: Optional[int]) -> str:
        """The experiment folder of the trials' runs on one split (the plain study name without --split_seeds)."""
        return self.study_name if split_seed is None else f"{self.study_name}_split{split_seed}"

    def check(self) -> None:
        """Every key of the space is an option of the recipe (parsed, nothing trained)."""
        example = {k: (v.choices[0] if hasattr(v, "choices") else v.low) for k, v in self.space.items()}
        args = self.args(example, self.study_name)
        read_config([], args)

    def recipe_params(self) -> dict:
        """The recipe's own value of each key of the space, where the space holds it (the rest are sampled)."""
        config = read_config([], self.args({}, self.study_name))
        found = {}
        for key, dist in self.space.items():
            try:
                value = config[key]
                inside = value is not None and dist._contains(dist.to_internal_repr(value))
            except (KeyError, ValueError, TypeError):
                inside = False
            if inside:
                found[key] = value
        left = sorted(set(self.space) - set(found))
        print(f"[tune] {self.study_name}: trial 0 is the recipe as it stands"
              + (f" ({', '.join(left)} sampled: not in the space or not set)" if left else ""), file=sys.stderr)
        return found

    def objective(self, trial) -> float:
        from optuna_integration import PyTorchLightningPruningCallback

        params = {key: suggest(trial, key, dist) for key, dist in self.space.items()}
        scores = []
        for index, split_seed in enumerate(self.split_seeds or [None]):
            name = self.run_name(split_seed)
            args = self.args(params, name)
            if split_seed is not None:
                args += ["--data.split_seed", str(split_seed)]
            folder = self.logdir / name / f"version_{trial.number}"
            extra = {"trial": {"study": self.study_name, "number": trial.number, "params": trial.params},
                     **({"encoder": self.encoder} if self.encoder else {}),
                     **({} if split_seed is None else {"split_seed": split_seed})}
            # pruned on the first split's epochs (the others follow a trial that was kept)
            callbacks = [PyTorchLightningPruningCallback(trial, MONITOR)] if self.prune and index == 0 else []
            try:
                run_one(args, extra, trial.number, self._resume_from(trial, name), callbacks=callbacks, test=False)
            except Exception as err:
                if type(err).__name__ == "TrialPruned":
                    record = read_record(folder)
                    record["trial"]["state"] = "pruned"
                    write_record(folder, record)
                raise
            record = read_record(folder)
            record["trial"]["state"] = "complete"
            write_record(folder, record)
            scores.append(record["best_val_acc"])
        return sum(scores) / len(scores)

    def _resume_from(self, trial, name: str) -> Optional[Path]:
        """A retried trial (its worker died) goes on from its first attempt's last.ckpt."""
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        with warnings.catch_warnings():  # (experimental in Optuna since 2.8; the record it reads is stable)
            warnings.simplefilter("ignore")
            first = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        return last_checkpoint(self.logdir / name / f"version_{first}") if first is not None else None

    def write_best(self, study) -> Optional[Path]:
        import optuna

        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            return None
        best = study.best_trial
        out = self.logdir / self.study_name / "best.yaml"
        recipe = os.path.relpath(Path(self.configs[-1]).resolve(), out.parent.resolve())
        header = (f"# The best of study {self.study_name!r}: trial {best.number}, {MONITOR} {best.value:.4f} "
                  f"({len(complete)} trials complete)\n")
        body = {"base": recipe, **nested(best.params)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(header + yaml.safe_dump(body, sort_keys=False))
        return out

    def test_best(self, study) -> None:
        """With data.test_files set: the best trial's best checkpoint on the test files, once per study."""
        import optuna

        if not self.test_files or study.user_attrs.get("tested"):
            return
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if running:  # another worker's trial could still become the best: the last worker to finish tests
            print(f"[tune] {self.study_name}: trial(s) {', '.join(str(t.number) for t in running)} still running in "
                  "other workers; the last to finish tests the best (or start tune again once they are done)",
                  file=sys.stderr)
            return
        best = study.best_trial
        ckpt = best_checkpoint(self.logdir / self.run_name((self.split_seeds or [None])[0]) / f"version_{best.number}")
        study.set_user_attr("tested", best.number)
        args = self.args(best.params, f"{self.study_name}_test")
        if self.split_seeds:
            args += ["--data.split_seed", str(self.split_seeds[0])]
        run_one(args, {"trial": {"study": self.study_name, "number": best.number, "params": best.params,
                                 "state": "tested"}}, best.number, None, test_only=ckpt)


def tune(encoders: Optional[list[str]], configs: list[str], space_path: str, trials: int, overrides: list[str],
         logdir: str, storage: Optional[str], study: str, split_seeds: Optional[list[int]], prune: bool,
         heartbeat: int = 60, timeout_min: Optional[float] = None, recipe_first: bool = False) -> list[dict]:
    import optuna

    per_encoder = encoder_configs(encoders or [None], configs)
    if not configs:
        raise UserError("--config RECIPE.yaml is required: the recipe whose settings are searched")
    if trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    space = read_space(space_path)
    root = Path(logdir)
    tuners = [Tuner(e, files, preset, space, overrides, root, f"{study}-{e}" if e else study, split_seeds, prune)
              for e, (files, preset) in per_encoder.items()]
    for tuner in tuners:  # every key, for every encoder, before any database or run folder is made
        tuner.check()
    backend = open_storage(storage, root, heartbeat)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if prune else optuna.pruners.NopPruner()
    board = []
    for tuner in tuners:
        found = load_study(backend, tuner.study_name, space, sampler=optuna.samplers.TPESampler(seed=None))
        found.pruner = pruner
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        # the study's budget is `trials` finished trials, whichever worker runs them
        callback = optuna.study.MaxTrialsCallback(trials, states=states)
        if recipe_first and not found.trials:  # the study's trial 0: the recipe itself, on the same objective
            found.enqueue_trial(tuner.recipe_params())
        if sum(t.state in states for t in found.trials) < trials:
            # a time budget stops new trials, never a running one: the study resumes where it stopped
            found.optimize(tuner.objective, callbacks=[callback], catch=(), gc_after_trial=True,
                           timeout=None if timeout_min is None else timeout_min * 60 / len(tuners))
        best = tuner.write_best(found)
        tuner.test_best(found)
        counts = {s.name.lower(): sum(t.state == s for t in found.trials) for s in optuna.trial.TrialState}
        board.append({"study": tuner.study_name, "encoder": tuner.encoder, "best": found.best_value if best else None,
                      "params": found.best_params if best else {}, "best_yaml": str(best) if best else None, **counts})
    return board


def print_board(board: list[dict]) -> None:
    print(f"{'study':<28} {'complete':>8} {'pruned':>6} {'failed':>6}  best {MONITOR}  parameters")
    for row in sorted(board, key=lambda r: -(r["best"] or 0)):
        best = f"{row['best']:.4f}" if row["best"] is not None else "-"
        params = ", ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                           for k, v in row["params"].items())
        print(f"{row['study']:<28} {row['complete']:>8} {row['pruned']:>6} {row['fail']:>6}  {best:>12}  {params}")
    for row in board:
        if row["best_yaml"]:
            print(f"  {row['study']}: imdb-lightning fit --config {row['best_yaml']}")


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="imdb-lightning tune", description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=[],
                        help="the recipe YAML(s) searched from; {encoder} in a path is replaced by each encoder's name")
    parser.add_argument("--space", required=True, help="search-space YAML: dotted config keys -> distributions")
    parser.add_argument("--trials", type=int, default=20, help="finished (complete or pruned) trials per study")
    parser.add_argument("--encoders", type=comma_list(), default=None,
                        help=f"one study each, the same number of trials (from {','.join(ENCODERS)})")
    parser.add_argument("--split_seeds", type=comma_list(int), default=None,
                        help="score each trial by its mean best val/acc over these validation splits")
    parser.add_argument("--storage", default=None, help="SQLAlchemy URL (default: sqlite file LOGDIR/tune.db)")
    parser.add_argument("--study", default="tune", help="study name: workers with the same one cooperate")
    parser.add_argument("--no_pruning", action="store_true", help="run every trial to its last epoch")
    parser.add_argument("--heartbeat", type=int, default=60, help="seconds between a worker's heartbeats")
    parser.add_argument("--recipe_first", action="store_true",
                        help="a new study's first trial is the recipe as it stands, scored like every other")
    parser.add_argument("--timeout", type=float, default=None, metavar="MINUTES",
                        help="this worker starts no trial after MINUTES (shared equally between --encoders' studies); "
                             "the trial running then finishes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override, as on the fit command line without '--'; data.test_files tests the best once")
    parser.add_argument("--logdir", default="lightning_logs")
    opts = parser.parse_args(argv)
    for seed in opts.split_seeds or []:
        check_seed("--split_seeds", seed)
    if opts.heartbeat < 1:
        raise UserError(f"--heartbeat must be at least 1 second, got {opts.heartbeat}")
    if opts.timeout is not None and opts.timeout <= 0:
        raise UserError(f"--timeout must be a positive number of minutes, got {opts.timeout}")
    board = tune(opts.encoders, opts.config, opts.space, opts.trials, opts.set, opts.logdir, opts.storage, opts.study,
                 opts.split_seeds, not opts.no_pruning, opts.heartbeat, opts.timeout,
                 opts.recipe_first)
    print_board(board)
    print(f"[tune] compare the trials with: imdb-lightning compare {opts.logdir}", file=sys.stderr)
