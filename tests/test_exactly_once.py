"""Sweeps on several workers: every cell trained exactly once, under kills at random points, forced races and
cells that raise, on SQLite and on PostgreSQL. Each worker is a real `imdb-lightning sweep` process; a callback
(sweep_marker.py) appends every fit start, step and end to a file, so trainings are counted apart from the code
under test."""

import os
import random
import signal
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import optuna
import pytest
from sweep_marker import events

import imdb_lightning
from conftest import EXPERIMENTS, SMALL_SETS
from imdb_lightning.runs import read_record, run_folders

PACKAGE_ROOT = Path(imdb_lightning.__file__).parents[1]  # the workers run the package these tests import

NBOW = str(EXPERIMENTS / "tuned" / "nbow.yaml")
# two epochs of four batches: last.ckpt is written mid-fit (each epoch's next-to-last step), so a kill can land
# after a save, and a restart must resume from it
CHAOS_SETS = [*SMALL_SETS, "trainer.max_epochs=2", "trainer.limit_train_batches=4", "trainer.callbacks+=sweep_marker.Marker"]


class Workers:
    """Sweep workers on one grid (encoder nbow, `cells` seeds), started, signalled and restarted by a test."""

    def __init__(self, tmp_path: Path, cells: int, storage: str | None, pause: float = 0.1, *extra: str, env=None):
        self.tmp, self.marker = tmp_path, tmp_path / "marker.jsonl"
        self.args = ["sweep", "--encoders", "nbow",
                     "--seeds", ",".join(map(str, range(cells))), "--config", NBOW, "--logdir", str(tmp_path / "logs"),
                     *[a for item in CHAOS_SETS for a in ("--set", item)],
                     "--set", f"data.cache_dir={tmp_path / 'cache'}", "--heartbeat", "1",
                     *(["--storage", storage] if storage else []), *extra]
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", "MARKER_FILE": str(self.marker),
                    "MARKER_PAUSE": str(pause),
                    "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), str(Path(__file__).parent)]), **(env or {})}
        self.logs: list[Path] = []

    def start(self, *extra: str, env=None, held: bool = False) -> subprocess.Popen:
        """A worker; `held`: imported, then waiting for the file GO_FILE to start (sweep_marker.py)."""
        log = self.tmp / f"worker{len(self.logs)}.log"
        self.logs.append(log)
        launcher = [sys.executable, str(Path(__file__).with_name("sweep_marker.py"))] if held else \
            [sys.executable, "-m", "imdb_lightning"]
        with open(log, "w") as out:
            return subprocess.Popen([*launcher, *self.args, *extra], cwd=self.tmp,
                                    env={**self.env, "GO_FILE": str(self.tmp / "go"), **(env or {})},
                                    stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return "\n".join(f"--- {log.name}\n" + log.read_text()[-3000:] for log in self.logs)


def check_every_cell_trained_once(tmp_path: Path, cells: int, storage: str | None) -> None:
    """Each cell: one run folder, finished, with its validation and test figures; one training to its end, never
    two at once, never restarted from scratch once it had saved a state, nothing trained after it ended."""
    labels = {f"nbow seed {s}" for s in range(cells)}
    folders = run_folders(tmp_path / "logs" / "nbow")
    records = {f: read_record(f) for f in folders}
    assert sorted(r.get("seed") for r in records.values()) == list(range(cells)), records
    for folder, record in records.items():
        assert record["status"] == "finished", (folder, record)
        assert 0 <= record["best_val_acc"] <= 1 and 0 <= record["test"]["test/acc"] <= 1, (folder, record)

    by_cell = defaultdict(list)
    for event in events(tmp_path / "marker.jsonl"):
        by_cell[event["cell"]].append(event)
    assert set(by_cell) == labels
    for cell, seen in by_cell.items():
        ends = [e for e in seen if e["event"] == "fit_end"]
        assert ends, f"{cell}: never trained to its end"
        trained_after = [e for e in seen if e["event"] == "step" and e["t"] > ends[0]["t"]]
        assert not trained_after, f"{cell}: trained again after its fit ended: {trained_after[:3]}"
        assert len({e["run"] for e in seen}) == 1, f"{cell}: trained in several folders"
        for start in (e for e in seen if e["event"] == "fit_start"):
            assert start["resumed_from"] or not start["had_last"], f"{cell}: restarted from scratch over its last.ckpt"
        # one worker at a time: once a worker has set a cell up, no other worker's event on it follows
        owner = None
        for event in sorted(seen, key=lambda e: e["t"]):
            if event["event"].startswith("setup_"):
                owner = event["pid"]
            assert event["pid"] == owner, f"{cell}: worked on by two workers at once ({event})"
        tested = [e for e in seen if e["event"] == "test_end"]
        assert tested, f"{cell}: never tested"

    if storage:  # the study agrees: one complete trial per cell, valued at its run's best validation figure
        study = only_study(storage)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert sorted(t.params["cell"] for t in complete) == sorted(labels)
        assert not [t for t in study.trials if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)]
        by_label = {f"nbow seed {r['seed']}": r for r in records.values()}
        for trial in complete:
            assert trial.value == pytest.approx(by_label[trial.params["cell"]]["best_val_acc"])


def running_trials(storage: str) -> list:
    try:
        study = only_study(storage)
    except (ValueError, KeyError):  # (no study yet)
        return []
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))


def only_study(storage: str):
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


PHASES = {"setup": "setup_fit", "fit": "step", "test": "test_start"}


def chaos(tmp_path: Path, storage: str, seed: int, kills, extra: tuple = (), cells: int = 8, workers: int = 3) -> list[str]:
    """`workers` sweep workers on a grid of `cells`; each of `kills` ((phase, signal) pairs, or a number of random
    ones) sends a worker SIGKILL or SIGINT — at a random moment ("any"), or at a random point of a phase: set-up
    before a fit, a training step, a test — and restarts it at once. Asserts every cell was trained exactly once;
    returns the schedule as it ran."""
    rng = random.Random(seed)
    if isinstance(kills, int):
        kills = [(rng.choice(["any", *PHASES]), rng.choice([signal.SIGKILL, signal.SIGINT])) for _ in range(kills)]
    team = Workers(tmp_path, cells, storage, 0.1, *extra)
    alive = [team.start() for _ in range(workers)]
    seen, schedule = 0, []
    for phase, sig in kills:
        victim, deadline = None, time.monotonic() + 300  # (workers start slowly on a busy machine)
        if phase == "any":
            time.sleep(rng.uniform(0, 4))
            victim = rng.choice(alive)
        while victim is None and time.monotonic() < deadline and any(w.poll() is None for w in alive):
            new = events(team.marker)[seen:]
            seen += len(new)
            hits = [e["pid"] for e in new if e["event"] == PHASES[phase]]
            victim = next((w for w in alive if w.pid in hits and w.poll() is None), None)
            time.sleep(0.05)
        if victim is None or victim.poll() is not None:
            schedule.append(f"{phase}: no worker in it")
            continue
        time.sleep(rng.uniform(0, 0.2))
        victim.send_signal(sig)
        try:
            victim.wait(timeout=120)
        except subprocess.TimeoutExpired:  # (PYTHONFAULTHANDLER: SIGABRT writes every thread's stack to its log)
            victim.send_signal(signal.SIGABRT)
            victim.wait(timeout=60)
            raise AssertionError(f"a worker did not stop within 2 minutes of {signal.Signals(sig).name}:\n"
                                 + team.output()) from None
        schedule.append(f"{signal.Signals(sig).name} {phase}")
        alive[alive.index(victim)] = team.start()
    for worker in alive:
        assert worker.wait(timeout=600) == 0, team.output()
    check_every_cell_trained_once(tmp_path, cells, storage)
    return schedule


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sweep.db'}"


def test_three_workers_killed_and_restarted_train_every_cell_once(tmp_path):
    started = time.monotonic()
    # each phase once, at a random point in it; a SIGKILL while testing left a cell "finished" and untested
    kills = [("fit", signal.SIGKILL), ("test", signal.SIGKILL), ("setup", signal.SIGINT), ("fit", signal.SIGINT)]
    schedule = chaos(tmp_path, sqlite_url(tmp_path), seed=0, kills=kills)
    print(f"chaos schedule {schedule}: {time.monotonic() - started:.0f} s")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 21))
def test_chaos_on_sqlite(tmp_path, seed):
    started = time.monotonic()
    schedule = chaos(tmp_path, sqlite_url(tmp_path), seed=seed, kills=random.Random(seed).randint(3, 6),
                     extra=("--max_retries", "10"))
    print(f"chaos schedule {seed} {schedule}: {time.monotonic() - started:.0f} s")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 21))
def test_chaos_on_postgresql(tmp_path, postgres_url, seed):
    started = time.monotonic()
    schedule = chaos(tmp_path, postgres_url, seed=seed, kills=random.Random(seed).randint(3, 6),
                     extra=("--max_retries", "10"))
    print(f"chaos schedule {seed} {schedule}: {time.monotonic() - started:.0f} s")


@pytest.mark.slow
def test_a_dead_workers_cell_is_taken_over_by_a_worker_that_waits_for_it(tmp_path):
    # The slow worker is killed mid-fit just as the other finishes the rest of the grid, well inside the grace
    # period (2 heartbeats of 2 s): that worker must wait, notice the silence and take the cell over.
    team = Workers(tmp_path, 2, sqlite_url(tmp_path), 0.0, "--heartbeat", "2")
    slow = team.start(env={"MARKER_PAUSE": "3"})
    wait_for(team, lambda e: e["event"] == "step" and e["pid"] == slow.pid, slow)  # mid-fit: a fit of 24 s
    fast = team.start()
    wait_for(team, lambda e: e["event"] == "test_start" and e["pid"] == fast.pid, fast)
    assert not [e for e in events(team.marker) if e["event"] == "fit_end" and e["pid"] == slow.pid]
    slow.send_signal(signal.SIGKILL)
    slow.wait()
    assert fast.wait(timeout=300) == 0, team.output()
    check_every_cell_trained_once(tmp_path, 2, sqlite_url(tmp_path))
    assert "waiting for nbow seed" in team.logs[1].read_text()


def wait_for(team: Workers, seen, worker: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not [e for e in events(team.marker) if seen(e)]:
        assert time.monotonic() < deadline and worker.poll() is None, team.output()
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_two_workers_released_together_on_the_last_cell_train_it_once(tmp_path, storage, request):
    url = sqlite_url(tmp_path) if storage == "sqlite" else request.getfixturevalue("postgres_url")
    team = Workers(tmp_path, 1, url, 0.0)
    # the first is slowed for 4 s between being handed the cell and recording it as its own; the second is
    # released the moment the first holds it
    first = team.start(env={"CLAIM_DELAY": "4", "GO_FILE": str(tmp_path / "go1")}, held=True)
    second = team.start(env={"GO_FILE": str(tmp_path / "go2")}, held=True)
    time.sleep(5)  # (imports)
    (tmp_path / "go1").touch()
    deadline = time.monotonic() + 120
    while not running_trials(url):
        assert time.monotonic() < deadline and first.poll() is None, team.output()
        time.sleep(0.02)
    (tmp_path / "go2").touch()
    assert first.wait(timeout=300) == 0 and second.wait(timeout=300) == 0, team.output()
    check_every_cell_trained_once(tmp_path, 1, url)
    assert len([e for e in events(team.marker) if e["event"] == "fit_start"]) == 1


@pytest.mark.slow
def test_a_cell_that_raises_is_run_again_and_the_sweep_ends_well(tmp_path):
    team = Workers(tmp_path, 2, sqlite_url(tmp_path), 0.0)
    # raises on its first start only: run again at once, and the sweep ends well
    once = team.start(env={"MARKER_FAIL": "nbow seed 1:1"})
    assert once.wait(timeout=300) == 0, team.output()
    check_every_cell_trained_once(tmp_path, 2, sqlite_url(tmp_path))
    starts = [e for e in events(team.marker) if e["event"] == "fit_start" and e["cell"] == "nbow seed 1"]
    assert len(starts) == 2
    study = only_study(sqlite_url(tmp_path))
    (failed,) = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed.params["cell"] == "nbow seed 1" and "planted failure" in failed.user_attrs["error"]


@pytest.mark.slow
def test_a_cell_that_keeps_raising_is_reported_failed_not_done_and_a_restart_retries_it(tmp_path):
    team = Workers(tmp_path / "b", 2, sqlite_url(tmp_path), 0.0)
    (tmp_path / "b").mkdir()
    always = team.start(env={"MARKER_FAIL": "nbow seed 1:99"})
    assert always.wait(timeout=300) != 0
    said = team.logs[-1].read_text()
    assert "imdb-lightning: error: sweep: 1 of 2 cells failed: nbow seed 1 (4 attempts; last: RuntimeError: planted" in said
    assert "[sweep] done" not in said and "Traceback" not in said
    starts = lambda: [e for e in events(team.marker) if e["event"] == "fit_start" and e["cell"] == "nbow seed 1"]  # noqa: E731
    assert len(starts()) == 4  # the first attempt and --max_retries 3
    # the retries are spent: started again, it says so and trains nothing; with more retries, it runs the cell
    again = team.start()
    assert again.wait(timeout=300) != 0 and "nbow seed 1 (4 attempts" in team.logs[-1].read_text()
    assert len(starts()) == 4
    more = team.start("--max_retries", "4")
    assert more.wait(timeout=300) == 0, team.output()
    assert len(starts()) == 5
    check_every_cell_trained_once(tmp_path / "b", 2, sqlite_url(tmp_path))


def test_a_ctrl_c_mid_fit_says_to_start_the_sweep_again_which_resumes_the_cell_from_its_last_checkpoint(
        tmp_path, monkeypatch, capsys):
    from imdb_lightning.cli import cli_main

    monkeypatch.setenv("MARKER_FILE", str(tmp_path / "marker.jsonl"))
    args = ["sweep", "--encoders", "nbow", "--seeds", "0", "--config", NBOW, "--logdir", str(tmp_path / "logs"),
            *[a for item in CHAOS_SETS for a in ("--set", item)], "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    monkeypatch.setenv("MARKER_SIGINT", "nbow seed 0:6")  # Ctrl-C in epoch 1: last.ckpt is written at step 6
    with pytest.raises(SystemExit) as stopped:
        cli_main(args)
    assert stopped.value.code == 130
    said = capsys.readouterr()
    assert "Start the same sweep again to go on from there" in said.out and "--ckpt_path last" not in said.out
    assert "interrupted: start the same sweep again" in said.err
    (run,) = run_folders(tmp_path / "logs" / "nbow")
    assert read_record(run)["status"] == "interrupted"

    monkeypatch.delenv("MARKER_SIGINT")
    cli_main(args)
    starts = [e for e in events(tmp_path / "marker.jsonl") if e["event"] == "fit_start"]
    assert [s["resumed_from"] for s in starts] == [None, str(run / "checkpoints" / "last.ckpt")]
    steps = [e["step"] for e in events(tmp_path / "marker.jsonl") if e["event"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]  # on from the saved step: every step once, never from scratch
    record = read_record(run)
    assert record["status"] == "finished" and record["segments"][-1]["from_checkpoint"]["path"] == "checkpoints/last.ckpt"
    assert "test/acc" in record["test"]
    check_every_cell_trained_once(tmp_path, 1, None)


@pytest.mark.parametrize("setting, message", [
    ("data.bogus=1", r"imdb-lightning: error: --set data\.bogus=1: data\.bogus is not a setting of the recipe"),
    ("model.dropout=abc", r"--set model\.dropout=abc: the recipe refuses it \(.*float"),
    ("model.dropout=1.5", r"dropout"),
])
def test_a_bad_setting_is_one_line_before_any_database_or_folder_is_made(tmp_path, capfd, setting, message):
    from imdb_lightning.cli import cli_main

    with pytest.raises(SystemExit, match=message):
        cli_main(["sweep", "--encoders", "nbow", "--seeds", "0", "--config", NBOW, "--logdir", str(tmp_path / "logs"),
                  *[a for item in SMALL_SETS for a in ("--set", item)], "--set", setting,
                  "--storage", sqlite_url(tmp_path)])
    assert not (tmp_path / "logs").exists() and not (tmp_path / "sweep.db").exists()
    assert "Traceback" not in capfd.readouterr().err


def test_a_heartbeat_the_database_refuses_once_does_not_end_a_live_trial(tmp_path, monkeypatch):
    import sqlalchemy
    from optuna.distributions import FloatDistribution
    from optuna.storages import RDBStorage

    from imdb_lightning.tools.studies import load_study, open_storage

    refused = []
    record = RDBStorage.record_heartbeat

    def flaky(self, trial_id):
        refused.append(trial_id)
        if len(refused) == 2:  # the second beat: a dropped connection
            raise sqlalchemy.exc.OperationalError("UPDATE trial_heartbeats", {}, Exception("server closed the connection"))
        return record(self, trial_id)

    monkeypatch.setattr(RDBStorage, "record_heartbeat", flaky)
    storage = open_storage(sqlite_url(tmp_path), tmp_path, heartbeat=1)
    study = load_study(storage, "live", {"x": FloatDistribution(0, 1)})

    def objective(trial):
        time.sleep(4.5)  # past two grace periods (2 s): another worker now looks for dead trials
        with warnings.catch_warnings():  # (experimental in Optuna)
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(trial.study)
        return trial.suggest_float("x", 0, 1)

    study.optimize(objective, n_trials=1)
    assert len(refused) >= 4 and [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]


def test_a_database_server_that_does_not_answer_is_an_error_in_seconds_not_a_hang(tmp_path, monkeypatch):
    import socket
    import threading

    from imdb_lightning.errors import UserError
    from imdb_lightning.tools import studies

    monkeypatch.setattr(studies, "CONNECT_TIMEOUT_S", 2, raising=False)
    with socket.socket() as silent:  # accepts connections (the kernel does), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql://nobody@127.0.0.1:{silent.getsockname()[1]}/none"
        outcome = []
        opener = threading.Thread(target=lambda: outcome.append(catch(UserError, studies.open_storage, url, tmp_path, 60)),
                                  daemon=True)
        opener.start()
        opener.join(timeout=20)
    assert outcome and f"--storage {url}: cannot open the database" in str(outcome[0])


def catch(kind, function, *args):
    try:
        return function(*args)
    except kind as err:
        return err
