"""`imdb-lightning tune` (Optuna studies in a database) and the sweep's grid on the same engine, on generated data."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from conftest import EXPERIMENTS, SMALL_SETS
from imdb_lightning.cli import cli_main
from imdb_lightning.runs import read_record, resolve, run_folders

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
              None, True).check(f"{space}.yaml")


def test_a_study_scores_runs_prunes_on_their_figures_and_writes_a_best_yaml_that_reproduces_the_best(
        tmp_path, monkeypatch, capsys):
    import numpy as np

    from imdb_lightning.tools.compare import read_curves

    monkeypatch.chdir(tmp_path)
    # four trials of known peak learning rates (from one that learns nothing to one that learns), long enough
    # (3 epochs of 6 batches) for their figures to differ
    storage = f"sqlite:///{tmp_path / 'logs' / 'tune.db'}"
    (tmp_path / "logs").mkdir()
    queued = optuna.create_study(study_name="tune", storage=storage, direction="maximize")
    for max_lr in (0.03, 1e-5, 0.01, 1e-4):
        queued.enqueue_trial({"model.scheduler.init_args.max_lr": max_lr, "model.dropout": 0.1})
    longer = ["--set", "data.synthetic_size=600", "--set", "trainer.max_epochs=3", "--set", "trainer.limit_train_batches=6"]
    args = tune_args(tmp_path, *longer)
    args[args.index("--space") + 1] = write_space(tmp_path / "logs", "model.scheduler.init_args.max_lr: "
                                                  "{log_uniform: [1.0e-5, 5.0e-2]}\nmodel.dropout: {uniform: [0.0, 0.5]}\n")
    cli_main(args)
    study = optuna.load_study(study_name="tune", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE and len(study.trials) == 4
    runs = {read_record(f)["trial"]["number"]: f for f in run_folders(tmp_path / "logs" / "tune")}
    assert sorted(runs) == [0, 1, 2, 3]

    complete = []
    for trial in study.trials:  # one worker: trial n ran after trials 0..n-1 had ended
        record = read_record(runs[trial.number])
        assert record["trial"]["params"] == trial.params
        # what the pruner was told is the run's own validation accuracy, epoch by epoch
        epochs = dict(read_curves(runs[trial.number])["val/acc"])
        assert trial.intermediate_values == pytest.approx(epochs)
        # the median rule, recomputed: after 2 complete trials, stop at the first epoch whose best so far is
        # below the median of the complete trials' figures at that epoch (higher is better)
        pruned_at = None
        for step in sorted(trial.intermediate_values):
            figures = [t.intermediate_values[step] for t in complete if step in t.intermediate_values]
            best_so_far = max(v for s, v in trial.intermediate_values.items() if s <= step)
            if len(complete) >= 2 and figures and best_so_far < np.median(figures):
                pruned_at = step
                break
        if pruned_at is None:
            assert trial.state == optuna.trial.TrialState.COMPLETE, trial.number
            assert record["status"] == "finished" and record["trial"]["state"] == "complete"
            assert trial.value == pytest.approx(record["best_val_acc"]) == pytest.approx(max(epochs.values()))
            complete.append(trial)
        else:
            assert trial.state == optuna.trial.TrialState.PRUNED and trial.last_step == pruned_at, trial.number
            assert record["status"] == "pruned" and record["trial"]["state"] == "pruned"

    # the best is the highest, and best.yaml is the whole configuration its run was made with
    best = max(complete, key=lambda t: t.value)
    assert study.best_trial.number == best.number
    best_yaml = tmp_path / "logs" / "tune" / "best.yaml"
    assert f"trial {best.number}, val/acc {best.value:.6f}" in best_yaml.read_text()
    out = capsys.readouterr().out
    assert f"{best.value:.4f}" in out and f"fit --config {best_yaml}" in out
    monkeypatch.chdir(tmp_path.parent)  # (read from anywhere)
    cli_main(["fit", "--config", str(best_yaml)])
    monkeypatch.chdir(tmp_path)
    (refit,) = run_folders(tmp_path / "logs" / "tune_best")
    assert read_record(refit)["best_val_acc"] == pytest.approx(best.value, abs=1e-6)

    # compare ranks the complete trials beside the refit, and names the pruned ones
    cli_main(["compare", str(tmp_path / "logs")])
    board = capsys.readouterr().out
    pruned = [t.number for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert f"{len(complete) + 1} finished of {len(study.trials) + 1} runs" in board
    assert all(f"tune/version_{n}: pruned" in board for n in pruned)

    # the study is finished: the same command again adds no trial; with other settings it is refused
    cli_main(args)
    assert len(optuna.load_study(study_name="tune", storage=storage).trials) == 4
    with pytest.raises(SystemExit, match=r"study 'tune' was created with other --set overrides: trainer.max_epochs=3 "
                                         r"\(this one: trainer.max_epochs=1\); give another --study"):
        cli_main([*args, "--set", "trainer.max_epochs=1"])


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
    ("model.no_such_option: {uniform: [0, 1]}\n", r"bad\.yaml: model\.no_such_option is not a setting of the recipe"),
    ("model.dropout: {choice: [a, b]}\n", r"bad\.yaml: the recipe refuses it \(.*model\.dropout"),
    ("model.dropout: {normal: [0, 1]}\n", r"model.dropout: unknown distribution 'normal'; the distributions are uniform"),
    ("model.dropout: {uniform: [0.5, 0.1]}\n", r"model.dropout: uniform needs \[low, high\] with low < high"),
    ("model.dropout: {log_uniform: [0, 0.5]}\n", r"log_uniform needs low > 0"),
    ("model.dropout: {uniform: [0.1, 0.5], log: true}\n", r"model.dropout: uniform with log: true is log_uniform"),
    ("model.dropout: {log_uniform: [0.1, 0.5], step: 0.1}\n", r"model.dropout: log_uniform takes no step"),
    ("data.batch_size: {int: [16, 64], log: true, step: 16}\n", r"data.batch_size: int takes log: true or a step: 16, not both"),
    ("data.batch_size: {int: [16, 64], step: 0}\n", r"data.batch_size: step: must be a whole number of at least 1, got 0"),
    ("data.batch_size: {choice: [16, 32], step: 2}\n", r"data.batch_size: choice takes no step"),
    ("model.dropout: {uniform: [0.9, 2.0]}\n",
     r"bad.yaml: the space reaches a setting the recipe refuses: model.dropout must be in \[0, 1\), got 2.0"),
    ("data.batch_size: {choice: []}\n", r"choice needs a non-empty list"),
    ("", r"an empty search space"),
])
def test_a_bad_search_space_is_one_line_and_writes_nothing(tmp_path, capfd, space, message):
    path = tmp_path / "bad.yaml"
    path.write_text(space)
    args = tune_args(tmp_path)
    args[args.index("--space") + 1] = str(path)
    with pytest.raises(SystemExit, match=message):
        cli_main(args)
    assert not (tmp_path / "logs").exists()
    assert "Traceback" not in capfd.readouterr().err


def test_an_unreachable_database_and_a_study_of_another_space_are_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"--storage sqlite:////no/such/dir/x.db: cannot open the database"):
        cli_main(tune_args(tmp_path, "--storage", "sqlite:////no/such/dir/x.db"))
    with pytest.raises(SystemExit, match=r"--storage (postgresql|mysql)://.*(driver is not installed|cannot open)"):
        cli_main(tune_args(tmp_path, "--storage", "postgresql://nobody@127.0.0.1:9/none"))
    storage = f"sqlite:///{tmp_path / 'other.db'}"
    made = optuna.create_study(study_name="tune", storage=storage, direction="maximize")
    made.set_user_attr("space", json.dumps({"x": "y"}))
    with pytest.raises(SystemExit, match=r"study 'tune' was created with another search space \(x\)"):
        cli_main(tune_args(tmp_path, "--storage", storage))


def test_the_study_maximises_so_its_best_trial_is_the_highest(tmp_path):
    from optuna.distributions import FloatDistribution

    from imdb_lightning.tools.studies import load_study, open_storage

    space = {"model.dropout": FloatDistribution(0.0, 0.5)}
    study = load_study(open_storage(None, tmp_path, 60), "two", space)
    for dropout, value in ((0.1, 0.62), (0.4, 0.81)):
        study.add_trial(optuna.trial.create_trial(params={"model.dropout": dropout}, distributions=space, value=value))
    assert study.best_trial.value == 0.81 and study.best_params == {"model.dropout": 0.4}
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE


@pytest.fixture
def review_files(tmp_path):
    """Training and test files of generated reviews, as --set overrides."""
    from conftest import write_reviews
    from imdb_lightning.data.synthetic import synthetic_reviews

    train, test = synthetic_reviews(300, seed=0), synthetic_reviews(60, seed=1)
    return ["--set", "data.source=files", "--set", f"data.train_files={write_reviews(tmp_path / 'train.parquet', *train)}",
            "--set", f"data.test_files={write_reviews(tmp_path / 'test.parquet', *test)}"]


def test_a_missing_best_checkpoint_is_an_error_never_a_new_fit(tmp_path, review_files):
    train_only = review_files[:-2]
    cli_main(tune_args(tmp_path, *train_only, "--no_pruning", trials=1))
    for ckpt in (tmp_path / "logs" / "tune" / "version_0" / "checkpoints").glob("best*.ckpt"):
        ckpt.unlink()
    with pytest.raises(SystemExit, match=r"version_0: the best trial's run has no best checkpoint .* to test"):
        cli_main(tune_args(tmp_path, *review_files, "--no_pruning", trials=1))  # the same study, now with test data
    assert run_folders(tmp_path / "logs" / "tune_test") == [] and len(run_folders(tmp_path / "logs" / "tune")) == 1


@pytest.mark.slow
def test_the_best_is_tested_once_a_dead_workers_trial_is_found_dead(tmp_path, review_files):
    # a worker died in trial 0 a moment ago: its heartbeat is fresh (5 s, grace 10 s) when this one starts
    (tmp_path / "logs").mkdir()
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'logs' / 'tune.db'}", heartbeat_interval=5)
    dead = optuna.create_study(study_name="tune", storage=storage, direction="maximize").ask()
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("tune"),
                                                                              dead.number))
    cli_main(tune_args(tmp_path, *review_files, "--no_pruning", "--heartbeat", "5", trials=1))
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'logs' / 'tune.db'}")
    assert study.trials[0].state == optuna.trial.TrialState.FAIL and study.best_trial.number == 1
    (tested,) = run_folders(tmp_path / "logs" / "tune_test")
    record = read_record(tested)
    assert record["trial"]["number"] == 1 and "test/acc" in record["test"] and study.user_attrs["tested"] == 1


def test_a_ctrl_c_mid_trial_queues_it_again_and_the_next_start_resumes_it(tmp_path, monkeypatch, capsys):
    from sweep_marker import events

    marker = tmp_path / "marker.jsonl"
    monkeypatch.setenv("MARKER_FILE", str(marker))
    args = tune_args(tmp_path, "--no_pruning", "--set", "trainer.max_epochs=2", "--set", "trainer.limit_train_batches=4",
                     "--set", "trainer.callbacks+=sweep_marker.Marker", trials=1)
    monkeypatch.setenv("MARKER_SIGINT", "tune seed 0:6")
    with pytest.raises(SystemExit) as stopped:
        cli_main(args)
    said = capsys.readouterr()
    assert stopped.value.code == 130 and "start the same tune again" in said.err
    assert "Start the same tune again to go on from there" in said.out
    monkeypatch.delenv("MARKER_SIGINT")
    cli_main(args)
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'logs' / 'tune.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert study.trials[1].params == study.trials[0].params
    first, retry = run_folders(tmp_path / "logs" / "tune")
    assert read_record(first)["status"] == "retried" and read_record(first)["retried_as"] == 1
    assert resolve(retry, read_record(retry)["segments"][0]["from_checkpoint"]["path"]) == first / "checkpoints" / "last.ckpt"
    assert [e["step"] for e in events(marker) if e["event"] == "step"] == [1, 2, 3, 4, 5, 6, 7, 8]


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
    retry = tmp_path / "logs" / "tune" / f"version_{retried[0].number}"
    resumed_from = read_record(retry)["segments"][0]["from_checkpoint"]["path"]
    assert resolve(retry, resumed_from) == run / "checkpoints" / "last.ckpt"  # from the first attempt's state
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
    assert read_record(killed)["segments"][-1]["from_checkpoint"]["path"] == "checkpoints/last.ckpt"  # resumed in its own folder
