"""The engine under `tune` and `sweep`: Optuna studies kept in a database that any number of workers share."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from ..errors import UserError
from ..training import compose

CONNECT_TIMEOUT_S = 10  # a filtered database host is an error after this, not a hang


def open_storage(url: Optional[str], logdir: Path, heartbeat: int, attempts: int = 5, retry_stale: bool = True,
                 null_pool: bool = False):
    """The study's database: a SQLite file in the log folder, or any SQLAlchemy URL. Heartbeats (RDB storages
    only; Optuna's journal file has none) let a live worker fail a dead one's trial; with `retry_stale` Optuna
    then queues it again (a sweep queues its failed cells itself: sweep.py)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # (our own lines say what failed)
    if url is None:
        logdir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(logdir / 'tune.db').resolve()}"
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings(), creation_lock(url):  # (heartbeats are "experimental" in Optuna)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return SteadyHeartbeatStorage(
                    url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3) if retry_stale else None,
                    engine_kwargs=engine_options(url, null_pool))
        except (ImportError, ModuleNotFoundError) as err:
            raise UserError(f"--storage {url}: its database driver is not installed ({err})") from err
        except Exception as err:  # sqlalchemy's OperationalError and kin: the server is not there
            # workers started together on a new database race to create its tables: the loser tries again
            if ("already exists" in str(err) or "UNIQUE" in str(err) or "Duplicate" in str(err)) and attempt + 1 < attempts:
                time.sleep(0.5 * (attempt + 1))
                continue
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise UserError(f"--storage {url}: cannot open the database ({first})") from err


def engine_options(url: str, null_pool: bool = False) -> dict:
    """SQLite waits for a busy file rather than failing; a server that does not answer is an error in seconds, a
    connection it dropped is noticed before use. `null_pool`: no connection kept between database calls (SQLAlchemy's
    NullPool), for more workers than the server takes connections."""
    options: dict = {"poolclass": sqlalchemy.pool.NullPool} if null_pool else {}
    if url.startswith("sqlite"):
        return {**options, "connect_args": {"timeout": 60}}
    if url.startswith(("postgresql", "mysql")):
        options["pool_pre_ping"] = True
        if "connect_timeout" not in url:
            options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return options


class SteadyHeartbeatStorage(RDBStorage):
    """Optuna's heartbeat thread ends at its first database error, and the trial it kept alive is then failed
    and run again by another worker while this one still trains it. A heartbeat that cannot be written is
    tried again within its interval instead, and the thread goes on to the next."""

    def record_heartbeat(self, trial_id: int) -> None:
        deadline = time.monotonic() + max(1, self.heartbeat_interval or 1)
        while True:
            try:
                return super().record_heartbeat(trial_id)
            except Exception as err:  # (sqlalchemy's OperationalError and kin)
                if time.monotonic() > deadline:
                    print(f"[heartbeat] not written ({type(err).__name__}); the next beat tries again", file=sys.stderr)
                    return None
                time.sleep(0.2)


@contextlib.contextmanager
def creation_lock(url: str):
    """Workers started together on a new SQLite file would race to create its tables: one at a time."""
    path = sqlite_path(url)
    if path is None or not path.parent.is_dir():  # (RDBStorage says so in its own words)
        yield
        return
    with open(f"{path}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sqlite_path(url: str) -> Optional[Path]:
    if not url.startswith("sqlite:///") or url.endswith(":memory:"):
        return None
    return Path(url.removeprefix("sqlite:///").split("?")[0])


class StudyLock:
    """One worker at a time in a study's critical sections (filling the queue and taking the next trial; testing
    the best), held by the database where it can: PostgreSQL's advisory lock (a transaction's: it ends with the
    connection, so a killed worker never keeps it), MySQL's GET_LOCK, and a file lock beside a SQLite file (a
    local disk: the kernel drops it with the process). Without a storage (one process) it is a no-op.

    `release` may be called early, inside the section, and again at its end."""

    def __init__(self, storage, study_name: str):
        self.storage, self.name = storage, study_name
        self.key = int.from_bytes(hashlib.sha1(f"imdb-lightning:{study_name}".encode()).digest()[:8], "big", signed=True)
        self._held = None

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if self.storage is None:
            self._held = ("none", None)
            return
        url = str(self.storage.engine.url)
        path = sqlite_path(url)
        if path is not None:
            file = open(f"{path}.{self.key & 0xFFFFFFFF:08x}.lock", "a")
            fcntl.flock(file, fcntl.LOCK_EX)
            self._held = ("file", file)
        elif url.startswith("postgresql"):
            connection = self.storage.engine.connect()
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": self.key})
            self._held = ("postgresql", connection)
        elif url.startswith("sqlite"):  # (in memory: one process)
            self._held = ("none", None)
        elif url.startswith("mysql"):
            connection = self.storage.engine.connect()
            connection.execute(sqlalchemy.text("SELECT GET_LOCK(:name, -1)"), {"name": f"imdb-lightning-{self.key}"})
            self._held = ("mysql", connection)
        else:
            raise UserError(f"--storage {url}: several workers need SQLite, PostgreSQL or MySQL to share a study")

    def release(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        kind, handle = held
        if kind == "file":
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        elif kind in ("postgresql", "mysql"):
            try:
                if kind == "mysql":
                    handle.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:name)"), {"name": f"imdb-lightning-{self.key}"})
                handle.rollback()  # (PostgreSQL: the transaction's lock ends here)
            finally:
                handle.close()


def identity_of(configs: list[str], preset: list[str], overrides: list[str]) -> dict:
    """What a study's trials are trials of, besides the space: the recipe's files (their text) and flags."""
    files = [a for c in configs for a in compose(c) if a != "--config"]
    texts = [a if "\n" in a or not Path(a).is_file() else Path(a).read_text(encoding="utf-8") for a in files]
    return {"recipe": [Path(c).name for c in configs],
            "recipe_digest": hashlib.sha1(json.dumps(texts).encode()).hexdigest()[:12],
            "preset": preset, "overrides": effective(overrides)}


def effective(overrides: list[str]) -> dict:
    """--set items as what they set: {key: value}, the last of a key winning (`key+=` appends: all kept)."""
    out: dict = {}
    for item in overrides:
        key, _, value = item.partition("=")
        if key.endswith("+"):
            out.setdefault(key, []).append(value)
        else:
            out[key] = value
    return dict(sorted(out.items()))


def load_study(storage, name: str, space: dict, direction: str = "maximize", sampler=None, identity: Optional[dict] = None):
    """Create the study, or join it; one created with another space, recipe or overrides is refused in one line."""
    from optuna.distributions import distribution_to_json

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # (our own lines say what failed)
    wanted = json.dumps({k: distribution_to_json(v) for k, v in sorted(space.items())})
    study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                load_if_exists=True)
    if study.direction != optuna.study.StudyDirection[direction.upper()]:
        raise UserError(f"study {name!r} was created to {study.direction.name.lower()}, this one would {direction}; "
                        "give another --study name")
    found = study.user_attrs.get("space")
    if found is None:
        study.set_user_attr("space", wanted)
    elif found != wanted:
        have = ", ".join(sorted(json.loads(found)))
        raise UserError(f"study {name!r} was created with another search space ({have}); give another --study "
                        "name, or the space it was made with")
    for key, value in (identity or {}).items():
        if key not in study.user_attrs:  # (a study made before it was recorded adopts it)
            study.set_user_attr(key, value)
        elif study.user_attrs[key] != value:
            raise UserError(f"study {name!r} was created with {describe(key, study.user_attrs[key], value)}; "
                            "give another --study name, or the settings it was made with")
    return study


def describe(key: str, theirs, mine) -> str:
    """The difference between a study's recorded identity and this command's, in the user's words."""
    if key == "overrides":
        def said(found, name):
            return "not set" if name not in found else f"{name}={found[name]}"

        keys = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
        return "other --set overrides: " + ", ".join(f"{said(theirs, k)} (this one: {said(mine, k)})" for k in keys)
    if key == "recipe":
        return f"--config {' '.join(theirs)}, this one --config {' '.join(mine)}"
    if key == "recipe_digest":
        return "another text of its recipe files (they were edited since)"
    if key == "preset":
        return f"encoder flags {' '.join(theirs) or '(none)'}, this one {' '.join(mine) or '(none)'}"
    return f"{key} {theirs}, this one {mine}"


# --- a fixed set of configurations, each run once -------------------------------------------------------------
CELL = "cell"  # the one parameter of a grid study: the cell's label


def cell_of(trial) -> Optional[str]:
    """The cell a trial is (or will be, while it waits) an attempt at."""
    return trial.params.get(CELL, trial.system_attrs.get("fixed_params", {}).get(CELL))


def counts_against(trial) -> bool:
    """Whether a failed attempt counts toward --max_retries: one that raised, or whose worker died mid-cell;
    not a Ctrl-C, nor a worker killed before it started the cell."""
    return not (trial.user_attrs.get("interrupted") or trial.user_attrs.get("lost_before_start"))


class CellQueue:
    """The cells of a grid as a study's WAITING trials, taken one at a time by any number of workers.

    Optuna's `ask` takes a waiting trial in one transaction (a row lock, and a WAITING -> RUNNING check), so a
    cell goes to one worker; a worker sends heartbeats while it runs one. Under the study's lock a worker puts
    each cell in the queue once, fails the cells of dead workers (no heartbeat for two intervals) and queues
    failed cells again, then takes the next: so the queue is filled once however many workers start together,
    and never runs dry while a cell is still to be done. A worker is done when no cell waits and none runs."""

    def __init__(self, study, storage, labels: list[str], max_retries: int):
        self.study, self.storage, self.labels, self.max_retries = study, storage, labels, max_retries
        self.lock = StudyLock(storage, study.study_name)
        self.distribution = optuna.distributions.CategoricalDistribution(labels)

    def refill(self) -> dict:
        """Under the lock: {"waiting": [...], "running": [...], "complete": {label: trial}, "failed": {label: [trials]}}."""
        from optuna.trial import TrialState

        if self.storage is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
        attempts: dict[str, list] = {label: [] for label in self.labels}
        for trial in self.study.get_trials(deepcopy=False):
            if self.storage is not None and trial.state == TrialState.RUNNING and "worker" not in trial.user_attrs:
                # taken by a worker that died before it said so (it held this lock until then): nobody runs it
                trial = self._fail(trial, lost_before_start=True)
            if cell_of(trial) in attempts:
                attempts[cell_of(trial)].append(trial)
        progress: dict = {"waiting": [], "running": [], "complete": {}, "failed": {}}
        for label, tried in attempts.items():
            states = {t.state for t in tried}
            if TrialState.COMPLETE in states:
                progress["complete"][label] = next(t for t in tried if t.state == TrialState.COMPLETE)
            elif TrialState.RUNNING in states:
                progress["running"].append(label)
            elif TrialState.WAITING in states:
                progress["waiting"].append(label)
            elif not tried:
                self.study.enqueue_trial({CELL: label})
                progress["waiting"].append(label)
            else:
                failed = [t for t in tried if t.state == TrialState.FAIL]
                if sum(map(counts_against, failed)) > self.max_retries:
                    progress["failed"][label] = failed
                else:
                    self._queue_again(label, max(tried, key=lambda t: t.number))
                    progress["waiting"].append(label)
        return progress

    def _fail(self, trial, **attrs):
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self._study_id(), trial.number)
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, value)
        self.storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
        return self.storage.get_trial(trial_id)

    def _study_id(self) -> int:
        return self.storage.get_study_id_from_name(self.study.study_name)

    def _queue_again(self, label: str, last) -> None:
        """The next attempt at a cell, marked as Optuna's RetryHeartbeatStaleTrialCallback marks its retries."""
        history = [*last.system_attrs.get("retry_history", []), last.number]
        self.study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING, params={CELL: label}, distributions={CELL: self.distribution},
            system_attrs={"failed_trial": history[0], "retry_history": history}))

    def take_next(self, run_cell) -> None:
        """Under the lock (held by the caller): run the next waiting cell, `run_cell(trial, label) -> value`.
        The lock is let go once the trial is this worker's for everyone to see: it sends heartbeats, and says so."""
        error: list[BaseException] = []

        def objective(trial) -> float:
            label = trial.suggest_categorical(CELL, self.labels)
            if self.storage is not None:  # (Optuna's heartbeat thread may not have written its first yet)
                self.storage.record_heartbeat(self.storage.get_trial_id_from_study_id_trial_number(
                    self._study_id(), trial.number))
            trial.set_user_attr("worker", worker_name())
            self.lock.release()
            try:
                return run_cell(trial, label)
            except (KeyboardInterrupt, SystemExit) as err:  # (Lightning ends a Ctrl-C'd fit with SystemExit)
                trial.set_user_attr("interrupted", True)
                raise KeyboardInterrupt from err
            except Exception as err:
                trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:500])
                error.append(err)
                raise

        self.study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
        if error and isinstance(error[0], UserError):  # bad input: every attempt would fail alike
            raise error[0]

    def run(self, run_cell, wait_s: float, say=print) -> dict:
        """Take cells until none waits or runs; returns the last refill's progress."""
        announced, lost = False, 0
        while True:
            try:
                with self.lock:
                    progress = self.refill()
                    if progress["waiting"]:
                        self.take_next(run_cell)
                        continue
            except sqlalchemy.exc.OperationalError as err:  # a dropped connection: a cell it cut short is retried
                lost += 1
                if lost > 5:
                    raise UserError(f"the study's database stopped answering ({str(err).splitlines()[0][:200]})") from err
                say(f"the database did not answer ({type(err).__name__}); trying again in {2 * lost} s")
                time.sleep(2 * lost)
                continue
            lost = 0
            if not progress["running"]:
                return progress
            if not announced:
                say(f"no cell left to take; waiting for {', '.join(progress['running'])} (other workers run them; "
                    f"a dead worker's cell is taken over after {2 * wait_s:g} s without its heartbeat)")
                announced = True
            time.sleep(wait_s)


def worker_name() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"
