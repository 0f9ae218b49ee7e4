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
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import yaml

from ..arguments import ArgumentParser, check_seed, comma_list
from ..errors import UserError
from ..models.encoders import ENCODERS
from ..runs import atomic_write, best_checkpoint, last_checkpoint, read_record, write_record
from ..training import load_yaml, make_cli, read_config
from .studies import StudyLock, identity_of, load_study, open_storage
from .sweep import encoder_configs, override_flags, refused_setting, run_one, run_test_only, set_sources

DISTRIBUTIONS = {"uniform": "a float in [low, high] (step: optional)", "log_uniform": "a float in [low, high], log scale",
                 "int": "an integer in [low, high] (step: optional)", "choice": "one of a list"}
MONITOR = "val/acc"


def read_space(path: str) -> dict:
    """{dotted key: optuna distribution} from a search-space YAML; a bad entry is one line naming it."""
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
        if kind not in DISTRIBUTIONS:
            raise UserError(f"{where}: unknown distribution {kind!r}; the distributions are {', '.join(DISTRIBUTIONS)}")
        space[key] = distribution(where, kind, spec[kind], spec.get("step"), spec.get("log"))
    return space


def distribution(where: str, kind: str, value, step, log):
    """One entry of a search space as an Optuna distribution; what Optuna would refuse or ignore is one line."""
    import optuna.distributions as d

    if log is not None and not isinstance(log, bool):
        raise UserError(f"{where}: log: takes true or false, got {log!r}")
    if kind == "choice":
        if step is not None or log is not None:
            raise UserError(f"{where}: choice takes no step: or log:")
        if not isinstance(value, list) or not value:
            raise UserError(f"{where}: choice needs a non-empty list")
        return d.CategoricalDistribution(value)
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                 for v in value) and value[0] < value[1]):
        raise UserError(f"{where}: {kind} needs [low, high] with low < high, got {value!r}")
    low, high = value
    if kind == "uniform" and log:
        raise UserError(f"{where}: uniform with log: true is log_uniform; write {{log_uniform: {value}}}")
    if kind == "log_uniform" and low <= 0:
        raise UserError(f"{where}: log_uniform needs low > 0, got {low}")
    if kind == "log_uniform" and step is not None:
        raise UserError(f"{where}: log_uniform takes no step: (a log scale has no even steps); use uniform with step:")
    if kind == "int":
        if not all(isinstance(v, int) for v in value):
            raise UserError(f"{where}: int needs whole numbers, got {value!r}")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 1):
            raise UserError(f"{where}: step: must be a whole number of at least 1, got {step!r}")
        if log and step not in (None, 1):
            raise UserError(f"{where}: int takes log: true or a step: {step}, not both (a log scale has no even steps)")
        if log and low < 1:
            raise UserError(f"{where}: int with log: true needs low >= 1, got {low}")
        return d.IntDistribution(low, high, step=step or 1, log=bool(log))
    if step is not None and (not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0):
        raise UserError(f"{where}: step: must be a number above 0, got {step!r}")
    return d.FloatDistribution(float(low), float(high), log=kind == "log_uniform",
                               step=None if step is None else float(step))


def suggest(trial, key: str, dist):
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, log=dist.log, step=dist.step)


def trial_flags(params: dict) -> list[str]:
    return [a for key, value in params.items() for a in (f"--{key}", json.dumps(value) if isinstance(value, str) else
                                                         str(value).lower() if isinstance(value, bool) else str(value))]


class Tuner:
    """One encoder's study: its configs, space and runs."""

    def __init__(self, encoder: Optional[str], configs: list[str], preset: list[str], space: dict, overrides: list[str],
                 logdir: Path, study_name: str, split_seeds: Optional[list[int]], prune: bool):
        self.encoder, self.configs, self.preset, self.space, self.logdir = encoder, configs, preset, space, logdir
        self.overrides, self.flags, self.study_name = overrides, override_flags(overrides), study_name
        self.split_seeds, self.prune = split_seeds, prune
        self.test_files = [v for item in overrides for k, _, v in [item.partition("=")] if k == "data.test_files"]

    def args(self, params: dict, name: str, seed: int = 0) -> list[str]:
        return [*[a for c in self.configs for a in ("--config", c)], *self.preset,
                "--seed_everything", str(seed), "--trainer.logger.init_args.save_dir", str(self.logdir),
                "--trainer.logger.init_args.name", name, *self.flags, *trial_flags(params)]

    def run_name(self, split_seed: Optional[int]) -> str:
        """The experiment folder of the trials' runs on one split (the plain study name without --split_seeds)."""
        return self.study_name if split_seed is None else f"{self.study_name}_split{split_seed}"

    def check(self, space_path: str) -> None:
        """Every key of the space is an option of the recipe (each choice parsed), and the recipe can be built with
        every range at its low end and at its high end (model, data and trainer made; nothing trained or written)."""
        from jsonargparse import ArgumentError

        choices = max([1, *(len(v.choices) for v in self.space.values() if hasattr(v, "choices"))])
        where = {**set_sources(self.overrides), **{key: space_path for key in self.space}}
        try:
            for index in range(1, choices - 1):  # (the first and last choices are built below)
                read_config([], self.args({k: corner(v, index) for k, v in self.space.items()}, self.study_name))
            for end in (0, -1):  # (an unknown key, a value of the wrong type: the parser's own words)
                make_cli(self.args({k: corner(v, end) for k, v in self.space.items()}, self.study_name), run=False)
        except ArgumentError as err:
            raise refused_setting(err, where) from err
        except UserError as err:
            raise UserError(f"{space_path}: the space reaches a setting the recipe refuses: {err}") from err

    def identity(self) -> dict:
        """What the study's trials are trials of: the recipe, the encoder's flags, the --set overrides (a test
        file only says where the best is tested)."""
        return identity_of(self.configs, self.preset, [o for o in self.overrides if not o.startswith("data.test_files=")])

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
                run_one(args, extra, trial.number, resume_from(trial, self.logdir / name), callbacks=callbacks, test=False,
                        command="tune")
            except (KeyboardInterrupt, SystemExit) as err:  # (Lightning ends a Ctrl-C'd fit with SystemExit)
                queue_again(trial)  # the next start goes on from this trial's last.ckpt
                raise KeyboardInterrupt from err
            except Exception as err:
                if type(err).__name__ == "TrialPruned":
                    set_trial_state(folder, "pruned")
                raise
            scores.append(set_trial_state(folder, "complete")["best_val_acc"])
        return sum(scores) / len(scores)

    def best_run(self, study) -> Path:
        return self.logdir / self.run_name((self.split_seeds or [None])[0]) / f"version_{study.best_trial.number}"

    def write_best(self, study) -> Optional[Path]:
        """`<study>/best.yaml`: the configuration the best trial's run was made with (its config.yaml: recipe,
        overrides, encoder flags, seed and the trial's parameters, resolved), to be fitted again elsewhere."""
        import optuna

        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            return None
        best, run = study.best_trial, self.best_run(study)
        if not (run / "config.yaml").is_file():
            raise UserError(f"{run}: the best trial's run has no config.yaml to write best.yaml from")
        config = refit_config(yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")), f"{self.study_name}_best")
        out = self.logdir / self.study_name / "best.yaml"
        split = f" on split seed {self.split_seeds[0]} (the study scores the mean over {self.split_seeds})" \
            if self.split_seeds else ""
        value = read_record(run).get("best_val_acc", best.value)
        header = (f"# The best of study {self.study_name!r}: trial {best.number}, {MONITOR} {value:.6f}{split} "
                  f"({len(complete)} trials complete).\n# The configuration its run {run} was made with: "
                  f"imdb-lightning fit --config {out} trains it again.\n")
        atomic_write(out, lambda tmp: Path(tmp).write_text(header + yaml.safe_dump(config, sort_keys=False)))
        return out

    def test_best(self, study, lock) -> None:
        """With data.test_files set: the best trial's best checkpoint on the test files, once per study, once no
        trial runs (another could still become the best) and none is a dead worker's."""
        if not self.test_files:
            return
        with lock:  # one worker tests; one killed while testing lets the next do it
            if study.user_attrs.get("tested") is not None:
                return
            if running(study):
                print(f"[tune] {self.study_name}: trial(s) {', '.join(str(t.number) for t in running(study))} still "
                      "running in other workers; the last to finish tests the best", file=sys.stderr)
                return
            best, run = study.best_trial, self.best_run(study)
            args = self.args(best.params, f"{self.study_name}_test")
            if self.split_seeds:
                args += ["--data.split_seed", str(self.split_seeds[0])]
            ckpt = best_checkpoint(run)
            if ckpt is None:
                raise UserError(f"{run}: the best trial's run has no best checkpoint (checkpoints/best*.ckpt) to test; "
                                "it was moved or deleted")
            run_test_only(args, {"trial": {"study": self.study_name, "number": best.number, "params": best.params,
                                       "state": "tested"}}, best.number, ckpt, run, command="tune")
            study.set_user_attr("tested", best.number)  # (a restart does not test again)


def resume_from(trial, runs: Path) -> Optional[Path]:
    """A retried trial (its worker died, or was stopped) goes on from the newest last.ckpt of its earlier
    attempts (their run folders under `runs`); their runs are marked as ones that will not finish."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    with warnings.catch_warnings():  # (experimental in Optuna since 2.8; the record it reads is stable)
        warnings.simplefilter("ignore")
        history = RetryHeartbeatStaleTrialCallback.retry_history(frozen)
    for number in history:
        earlier = runs / f"version_{number}"
        record = read_record(earlier)
        if record.get("status") in ("running", "interrupted", "crashed"):
            write_record(earlier, {**record, "status": "retried", "retried_as": trial.number})
    saved = [ckpt for number in reversed(history) if (ckpt := last_checkpoint(runs / f"version_{number}"))]
    return saved[0] if saved else None


def refit_config(config: dict, name: str) -> dict:
    """A run's configuration made to be fitted again from anywhere: its runs beside the study's, in a folder `name`
    of their own, and its data's paths absolute."""
    logger = config["trainer"].get("logger")
    init = logger.get("init_args") if isinstance(logger, dict) else None
    if init and init.get("save_dir"):
        init.update(save_dir=str(Path(init["save_dir"]).resolve()), name=name, version=None)
    data = config.get("data") or {}
    for key in ("train_files", "test_files", "cache_dir", "aclimdb_dir", "tokenizer_from"):
        data[key] = absolute(data.get(key))
    return config


def corner(dist, index: int):
    """A distribution's index-th choice (0 the first, -1 the last), or the low (0) or high (else) end of its range."""
    if hasattr(dist, "choices"):
        return dist.choices[index % len(dist.choices)]
    return dist.low if index == 0 else dist.high


def absolute(value):
    """A path that exists from here, as an absolute path (best.yaml is read from anywhere); others as they are."""
    if isinstance(value, str) and value and Path(value).exists():
        return str(Path(value).resolve())
    if isinstance(value, list):
        return [absolute(v) for v in value]
    return value


def set_trial_state(folder: Path, state: str) -> dict:
    record = read_record(folder)
    record["trial"]["state"] = state
    write_record(folder, record)
    return record


def queue_again(trial) -> None:
    """A stopped trial waits to be run again with its parameters, as Optuna's RetryHeartbeatStaleTrialCallback
    queues a dead worker's trial."""
    import optuna

    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    history = [*frozen.system_attrs.get("retry_history", []), trial.number]
    trial.study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
        system_attrs={"failed_trial": history[0], "retry_history": history}))


def running(study) -> list:
    """The study's running trials, after failing those of dead workers (no heartbeat for two intervals)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))


def tune(encoders: Optional[list[str]], configs: list[str], space_path: str, trials: int, overrides: list[str],
         logdir: str, storage: Optional[str], study: str, split_seeds: Optional[list[int]], prune: bool,
         heartbeat: int = 60, timeout_min: Optional[float] = None, recipe_first: bool = False,
         null_pool: bool = False) -> list[dict]:
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
        tuner.check(space_path)
    backend = open_storage(storage, root, heartbeat, null_pool=null_pool)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if prune else optuna.pruners.NopPruner()
    board = []
    for tuner in tuners:
        # constant_liar: a trial running in another worker counts as a poor one, so workers spread out
        found = load_study(backend, tuner.study_name, space, sampler=optuna.samplers.TPESampler(constant_liar=True),
                           identity=tuner.identity())
        found.pruner = pruner
        lock = StudyLock(backend, tuner.study_name)
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        # the study's budget is `trials` finished trials, whichever worker runs them
        callback = optuna.study.MaxTrialsCallback(trials, states=states)
        if recipe_first:
            with lock:  # (workers started together: one queues it)
                if not found.trials:  # the study's trial 0: the recipe itself, on the same objective
                    found.enqueue_trial(tuner.recipe_params())
        if sum(t.state in states for t in found.trials) < trials:
            # a time budget stops new trials, never a running one: the study resumes where it stopped
            found.optimize(tuner.objective, callbacks=[callback], catch=(), gc_after_trial=True,
                           timeout=None if timeout_min is None else timeout_min * 60 / len(tuners))
        if tuner.test_files:
            settle(found, heartbeat, tuner.study_name)
        else:
            running(found)  # (a dead worker's trial is failed, and queued again, by whoever looks)
        best = tuner.write_best(found)
        tuner.test_best(found, lock)
        counts = {s.name.lower(): sum(t.state == s for t in found.trials) for s in optuna.trial.TrialState}
        board.append({"study": tuner.study_name, "encoder": tuner.encoder, "best": found.best_value if best else None,
                      "params": found.best_params if best else {}, "best_yaml": str(best) if best else None, **counts})
    return board


def settle(study, heartbeat: int, name: str) -> None:
    """Wait, up to two heartbeats, for other workers' running trials: a dead worker's is failed (and queued again)
    once its heartbeat is that old; a live one's worker tests the best itself when it ends."""
    others = running(study)
    if not others:
        return
    print(f"[tune] {name}: waiting up to {2 * heartbeat} s for trial(s) {', '.join(str(t.number) for t in others)} "
          "of other workers", file=sys.stderr)
    deadline = time.monotonic() + 2 * heartbeat + 1
    while running(study) and time.monotonic() < deadline:
        time.sleep(min(heartbeat, 2))


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
    parser.add_argument("--null_pool", action="store_true",
                        help="keep no database connection between calls (for more workers than the server takes "
                        "connections; docs/tuning.md)")
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
    try:
        board = tune(opts.encoders, opts.config, opts.space, opts.trials, opts.set, opts.logdir, opts.storage, opts.study,
                     opts.split_seeds, not opts.no_pruning, opts.heartbeat, opts.timeout, opts.recipe_first,
                     opts.null_pool)
    except KeyboardInterrupt:
        print("\n[tune] interrupted: start the same tune again to go on (the stopped trial resumes from its last.ckpt)",
              file=sys.stderr)
        raise SystemExit(130) from None
    print_board(board)
    print(f"[tune] compare the trials with: imdb-lightning compare {opts.logdir}", file=sys.stderr)
