"""`imdb-lightning tune` (Optuna studies in a database) and the sweep's grid on the same engine, on generated data."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from conftest import EXPERIMENTS, SMALL, SMALL_SETS
from imdb_lightning.cli import cli_main
from imdb_lightning.runs import read_record, run_folders

NBOW = str(EXPERIMENTS / "tuned" / "nbow.yaml")
SETS = [a for item in SMALL_SETS for a in ("--set", item)]


def write_space(tmp_path, text="model.scheduler.init_args.max_lr: {log_uniform: [1.0e-3, 3.0e-2]}\n"
                                "model.dropout: {uniform: [0.0, 0.5]}\ndata.batch_size: {choice: [16, 32]}\n"):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def tune_args(tmp_path, *extra, trials=4):
    return ["tune", "--config", NBOW, "--space", write_space(tmp_path), "--trials", str(trials),
            "--logdir", str(tmp_path / "logs"), *SETS, "--set", f"data.cache_dir={tmp_path / 'cache'}", *extra]


@pytest.mark.parametrize("space, recipes", [("recurrent", ["rnn", "lstm", "gru", "bilstm", "bigru"]), ("nbow", ["nbow"])])
def test_every_shipped_search_space_names_options_of_its_recipes(space, recipes):
    from imdb_lightning.tools.tune import Tuner, read_space

    assert {p.stem for p in (EXPERIMENTS / "search").glob("*.yaml")} == {"recurrent", "nbow"}
    distributions = read_space(str(EXPERIMENTS / "search" / f"{space}.yaml"))
    assert len(distributions) >= 6
    for recipe in recipes:  # parses every key against the recipe; an unknown one raises
        Tuner(recipe, [str(EXPERIMENTS / "tuned" / f"{recipe}.yaml")], [], distributions, [], EXPERIMENTS, "check",
              None, True).check()


class PruneTrialOne(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return trial.number == 1


def test_a_study_runs_its_trials_as_runs_and_writes_a_best_recipe_that_fit_takes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(optuna.pruners, "MedianPruner", lambda **kwargs: PruneTrialOne())
    cli_main(tune_args(tmp_path))
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'logs' / 'tune.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3 and states.count(optuna.trial.TrialState.PRUNED) == 1

    runs = {read_record(f)["trial"]["number"]: read_record(f) for f in run_folders(tmp_path / "logs" / "tune")}
    assert sorted(runs) == [0, 1, 2, 3]
    assert runs[1]["status"] == "pruned" and runs[1]["trial"]["state"] == "pruned"
    for number in (0, 2, 3):
        assert runs[number]["status"] == "finished" and runs[number]["trial"]["state"] == "complete"
        trial = study.trials[number]
        assert runs[number]["best_val_acc"] == pytest.approx(trial.value)
        assert runs[number]["trial"]["params"] == trial.params

    best = tmp_path / "logs" / "tune" / "best.yaml"
    assert f"trial {study.best_trial.number}" in best.read_text()
    out = capsys.readouterr().out
    assert "tune" in out and f"{study.best_value:.4f}" in out and f"fit --config {best}" in out

    # the best recipe is a recipe: base: the one searched, plus the best parameters
    cli_main(["fit", "--config", str(best), *SMALL, "--data.cache_dir", str(tmp_path / "cache"),
              "--trainer.logger.init_args.save_dir", str(tmp_path / "refit")])
    config = (next((tmp_path / "refit").rglob("config.yaml"))).read_text()
    assert f"dropout: {study.best_params['model.dropout']}" in config

    # compare ranks the trials beside other runs and names the pruned one
    cli_main(["compare", str(tmp_path / "logs")])
    assert "pruned" in capsys.readouterr().out

    # the study is finished: another start adds no trial
    cli_main(tune_args(tmp_path))
    assert len(optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'logs' / 'tune.db'}").trials) == 4


def test_equal_budgets_one_study_per_encoder_and_a_leaderboard(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, "model.scheduler.init_args.max_lr: {log_uniform: [1.0e-3, 1.0e-2]}\n")
    cli_main(["tune", "--encoders", "nbow,gru", "--config", str(EXPERIMENTS / "tuned" / "{encoder}.yaml"), "--space", space,
              "--trials", "2", "--no_pruning", "--logdir", str(tmp_path / "logs"), *SETS,
              "--set", "model.encoder.init_args.embed_dim=8", "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    out = capsys.readouterr().out
    for encoder in ("nbow", "gru"):
        assert len(run_folders(tmp_path / "logs" / f"tune-{encoder}")) == 2
        assert f"tune-{encoder}" in out
        assert read_record(run_folders(tmp_path / "logs" / f"tune-{encoder}")[0])["encoder"] == encoder


@pytest.mark.parametrize("space, message", [
    ("model.no_such_option: {uniform: [0, 1]}\n", r"no_such_option"),
    ("model.dropout: {normal: [0, 1]}\n", r"model.dropout: unknown distribution 'normal'; the distributions are uniform"),
    ("model.dropout: {uniform: [0.5, 0.1]}\n", r"model.dropout: uniform needs \[low, high\] with low < high"),
    ("model.dropout: {log_uniform: [0, 0.5]}\n", r"log_uniform needs low > 0"),
    ("data.batch_size: {choice: []}\n", r"choice needs a non-empty list"),
    ("", r"an empty search space"),
])
def test_a_bad_search_space_is_one_line_and_writes_nothing(tmp_path, space, message):
    path = tmp_path / "bad.yaml"
    path.write_text(space)
    args = tune_args(tmp_path)
    args[args.index("--space") + 1] = str(path)
    with pytest.raises(SystemExit, match=message):
        cli_main(args)
    assert not (tmp_path / "logs").exists()


def test_an_unreachable_database_and_a_study_of_another_space_are_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"--storage sqlite:////no/such/dir/x.db: cannot open the database"):
        cli_main(tune_args(tmp_path, "--storage", "sqlite:////no/such/dir/x.db"))
    with pytest.raises(SystemExit, match=r"--storage (postgresql|mysql)://.*(driver is not installed|cannot open)"):
        cli_main(tune_args(tmp_path, "--storage", "postgresql://nobody@127.0.0.1:9/none"))
    storage = f"sqlite:///{tmp_path / 'other.db'}"
    optuna.create_study(study_name="tune", storage=storage).set_user_attr("space", json.dumps({"x": "y"}))
    with pytest.raises(SystemExit, match=r"study 'tune' was created with another search space \(x\)"):
        cli_main(tune_args(tmp_path, "--storage", storage))


def test_recipe_first_makes_trial_zero_the_recipe_and_samples_what_the_space_cannot_hold(tmp_path, capsys):
    # tuned/nbow.yaml: peak LR 0.01 and dropout 0.0 are inside this space; its batch 64 is not among the choices
    cli_main(tune_args(tmp_path, "--recipe_first", "--no_pruning", trials=2))
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'logs' / 'tune.db'}")
    first = study.trials[0].params
    assert first["model.scheduler.init_args.max_lr"] == 0.01 and first["model.dropout"] == 0.0
    assert first["data.batch_size"] in (16, 32)
    assert "trial 0 is the recipe as it stands (data.batch_size sampled" in capsys.readouterr().err
    assert read_record(run_folders(tmp_path / "logs" / "tune")[0])["trial"]["params"] == first


def test_a_time_budget_stops_new_trials_and_the_study_resumes_to_its_trial_budget(tmp_path):
    cli_main(tune_args(tmp_path, "--timeout", "0.0001", "--no_pruning"))  # the first trial outlasts it
    assert len(run_folders(tmp_path / "logs" / "tune")) == 1
    cli_main(tune_args(tmp_path, "--no_pruning", trials=2))  # the same study, resumed: one more trial
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'logs' / 'tune.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    with pytest.raises(SystemExit, match=r"--timeout must be a positive number of minutes, got 0"):
        cli_main(tune_args(tmp_path, "--timeout", "0"))


def test_a_study_on_a_postgresql_server_runs_resumes_and_refuses_another_space(tmp_path, postgres_url):
    cli_main(tune_args(tmp_path, "--storage", postgres_url, "--no_pruning", trials=2))
    cli_main(tune_args(tmp_path, "--storage", postgres_url, "--no_pruning", trials=3))  # resumed: one more
    study = optuna.load_study(study_name="tune", storage=postgres_url)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert len(run_folders(tmp_path / "logs" / "tune")) == 3
    assert (tmp_path / "logs" / "tune" / "best.yaml").is_file()
    assert not (tmp_path / "logs" / "tune.db").exists()  # nothing fell back to the SQLite default
    space = write_space(tmp_path / "logs", "model.dropout: {uniform: [0.0, 0.5]}\n")
    args = tune_args(tmp_path, "--storage", postgres_url)
    args[args.index("--space") + 1] = space
    with pytest.raises(SystemExit, match=r"study 'tune' was created with another search space"):
        cli_main(args)


def worker(tmp_path, *extra, trials=4):
    args = [sys.executable, "-m", "imdb_lightning", *tune_args(tmp_path, *extra, trials=trials)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_workers_on_one_storage_share_the_trials(tmp_path):
    workers = [worker(tmp_path) for _ in range(2)]
    for w in workers:
        assert w.wait(timeout=600) == 0, w.stderr.read()[-2000:]
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'logs' / 'tune.db'}")
    finished = [t for t in study.trials if t.state.is_finished()]
    # each worker stops once 4 trials are finished; one may have started a 5th meanwhile
    assert 4 <= len(finished) <= 5 and all(t.state != optuna.trial.TrialState.FAIL for t in finished)
    folders = run_folders(tmp_path / "logs" / "tune")
    assert sorted(read_record(f)["trial"]["number"] for f in folders) == sorted(t.number for t in study.trials)


@pytest.mark.slow
def test_a_worker_killed_mid_trial_has_its_trial_run_again_by_another(tmp_path):
    # long enough (40 batches x 3 epochs) that the kill lands mid-trial, after epoch 0's last.ckpt
    slow = ["--heartbeat", "1", "--set", "data.synthetic_size=3000", "--set", "trainer.limit_train_batches=40",
            "--set", "trainer.max_epochs=3"]
    first = worker(tmp_path, *slow, trials=2)
    run = tmp_path / "logs" / "tune" / "version_0"
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "last.ckpt").is_file():  # mid-trial: it has saved a state
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-2000:] if first.poll() else ""
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(3)  # past the grace period (2 heartbeats)
    second = worker(tmp_path, *slow, trials=2)
    assert second.wait(timeout=600) == 0, second.stderr.read()[-2000:]
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'logs' / 'tune.db'}")
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert retried and retried[0].state == optuna.trial.TrialState.COMPLETE
    assert retried[0].params == study.trials[0].params
    resumed = read_record(tmp_path / "logs" / "tune" / f"version_{retried[0].number}")["checkpoint"]
    assert resumed == str(run / "checkpoints" / "last.ckpt")  # from the first attempt's state
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 2


def sweep_worker(tmp_path, *extra):
    args = [sys.executable, "-m", "imdb_lightning", "sweep", "--encoders", "nbow,gru", "--seeds", "0,1", "--config",
            str(EXPERIMENTS / "tuned" / "{encoder}.yaml"), "--logdir", str(tmp_path / "logs"), *SETS,
            "--set", "model.encoder.init_args.embed_dim=8", "--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--storage", f"sqlite:///{tmp_path / 'sweep.db'}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def swept_cells(tmp_path) -> list[tuple]:
    records = [read_record(f) for e in ("nbow", "gru") for f in run_folders(tmp_path / "logs" / e) if read_record(f)]
    return sorted((r["encoder"], r["seed"], r["status"]) for r in records)


@pytest.mark.slow
def test_two_sweep_workers_on_one_storage_run_every_cell_exactly_once(tmp_path):
    two_sweep_workers_share_a_grid(tmp_path)


@pytest.mark.slow
def test_two_sweep_workers_on_a_postgresql_server_run_every_cell_exactly_once(tmp_path, postgres_url):
    two_sweep_workers_share_a_grid(tmp_path, "--storage", postgres_url)
    assert not (tmp_path / "sweep.db").exists()


def two_sweep_workers_share_a_grid(tmp_path, *extra):
    workers = [sweep_worker(tmp_path, *extra) for _ in range(2)]
    for w in workers:
        assert w.wait(timeout=600) == 0, w.stderr.read()[-2000:]
    assert swept_cells(tmp_path) == [("gru", 0, "finished"), ("gru", 1, "finished"),
                                     ("nbow", 0, "finished"), ("nbow", 1, "finished")]
    # started again on the finished grid: nothing is run twice
    again = sweep_worker(tmp_path, *extra)
    assert again.wait(timeout=600) == 0
    assert len(swept_cells(tmp_path)) == 4


@pytest.mark.slow
def test_a_sweep_cell_whose_worker_was_killed_is_resumed_by_the_next_worker(tmp_path):
    slow = ["--heartbeat", "1", "--set", "data.synthetic_size=3000", "--set", "trainer.limit_train_batches=40",
            "--set", "trainer.max_epochs=3"]
    first = sweep_worker(tmp_path, *slow)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "logs").glob("*/version_*/checkpoints/last.ckpt")):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed = next((tmp_path / "logs").glob("*/version_*/checkpoints/last.ckpt")).parents[1]
    assert read_record(killed)["status"] == "running"
    time.sleep(3)  # past the grace period
    second = sweep_worker(tmp_path, *slow)
    assert second.wait(timeout=600) == 0, second.stderr.read()[-2000:]
    assert [c[2] for c in swept_cells(tmp_path)] == ["finished"] * 4 and len(swept_cells(tmp_path)) == 4
    assert read_record(killed)["checkpoint"].endswith("last.ckpt")  # resumed in its own folder
