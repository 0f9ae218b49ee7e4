"""The engine under `tune` and `sweep`: Optuna studies kept in a database that any number of workers share."""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
import warnings
from pathlib import Path
from typing import Optional

from ..errors import UserError


def open_storage(url: Optional[str], logdir: Path, heartbeat: int, attempts: int = 5):
    """The study's database: a SQLite file in the log folder, or any SQLAlchemy URL. Heartbeats (RDB storages
    only; Optuna's journal file has none) let a live worker fail a dead one's trial, which is then retried."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url is None:
        logdir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(logdir / 'tune.db').resolve()}"
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings(), creation_lock(url):  # (heartbeats are "experimental" in Optuna)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                                  engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None)
        except (ImportError, ModuleNotFoundError) as err:
            raise UserError(f"--storage {url}: its database driver is not installed ({err})") from err
        except Exception as err:  # sqlalchemy's OperationalError and kin: the server is not there
            # workers started together on a new database race to create its tables: the loser tries again
            if ("already exists" in str(err) or "UNIQUE" in str(err) or "Duplicate" in str(err)) and attempt + 1 < attempts:
                time.sleep(0.5 * (attempt + 1))
                continue
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise UserError(f"--storage {url}: cannot open the database ({first})") from err


@contextlib.contextmanager
def creation_lock(url: str):
    """Workers started together on a new SQLite file would race to create its tables: one at a time."""
    if not url.startswith("sqlite:///"):
        yield
        return
    lock = Path(url.removeprefix("sqlite:///") + ".lock")
    if not lock.parent.is_dir():  # (RDBStorage says so in its own words)
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_study(storage, name: str, space: dict, direction: str = "maximize", sampler=None):
    """Create the study, or join it; one created with another space is refused."""
    import optuna
    from optuna.distributions import distribution_to_json

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    wanted = json.dumps({k: distribution_to_json(v) for k, v in sorted(space.items())})
    study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                load_if_exists=True)
    found = study.user_attrs.get("space")
    if found is None:
        study.set_user_attr("space", wanted)
    elif found != wanted:
        have = ", ".join(sorted(json.loads(found)))
        raise UserError(f"study {name!r} was created with another search space ({have}); give another --study "
                        "name, or the space it was made with")
    return study
