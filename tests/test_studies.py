"""The engine under tune and sweep: the study's database, the lock that serialises its creation, joining a study."""

import json

import optuna
import pytest

from imdb_lightning.errors import UserError
from imdb_lightning.tools.studies import creation_lock, load_study, open_storage

SPACE = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
         "cell": optuna.distributions.CategoricalDistribution(["lstm", "gru"])}


def test_the_default_storage_is_a_sqlite_file_in_the_log_folder(tmp_path):
    storage = open_storage(None, tmp_path / "a" / "logs", heartbeat=7)  # (the folders are made)
    assert storage.url == f"sqlite:///{(tmp_path / 'a' / 'logs' / 'tune.db').resolve()}"
    assert storage.heartbeat_interval == 7 and storage.grace_period == 14  # a dead worker's trial is failed after two
    retry = storage.heartbeat_stale_trial_callback  # ... and run again, three times at most
    assert isinstance(retry, optuna.storages.RetryHeartbeatStaleTrialCallback) and retry._max_retry == 3
    with pytest.raises(UserError, match=r"--storage mysql://u@h/db: its database driver is not installed"):
        open_storage("mysql://u@h/db", tmp_path, heartbeat=5)
    # the driver's own first line says why
    with pytest.raises(UserError, match=r"^--storage sqlite:////no/such/dir/x\.db: cannot open the database "
                                        r"\(\(sqlite3\.OperationalError\) unable to open database file\)$"):
        open_storage("sqlite:////no/such/dir/x.db", tmp_path, heartbeat=5)


def test_a_study_is_created_maximising_with_its_space_and_joined_only_with_that_space(tmp_path):
    storage = open_storage(None, tmp_path, heartbeat=5)
    study = load_study(storage, "s", SPACE)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # validation accuracy: higher is better
    assert sorted(json.loads(study.user_attrs["space"])) == ["cell", "lr"]
    study.enqueue_trial({"lr": 1e-3, "cell": "gru"})
    again = load_study(storage, "s", dict(reversed(list(SPACE.items()))))  # the same space in another order
    assert again._study_id == study._study_id and len(again.trials) == 1
    with pytest.raises(UserError, match=r"study 's' was created with another search space \(cell, lr\); give another "
                                        r"--study name"):
        load_study(storage, "s", {"lr": SPACE["lr"]})
    assert load_study(storage, "other", SPACE, direction="minimize").direction == optuna.study.StudyDirection.MINIMIZE
    sampler = optuna.samplers.RandomSampler(seed=0)
    assert load_study(storage, "sampled", SPACE, sampler=sampler).sampler is sampler


def test_only_a_new_sqlite_file_takes_the_creation_lock(tmp_path):
    with creation_lock(f"sqlite:///{tmp_path / 'x.db'}"):
        assert (tmp_path / "x.db.lock").is_file()
    with creation_lock(f"sqlite:///{tmp_path / 'missing' / 'x.db'}"):  # (the storage names that error itself)
        assert not (tmp_path / "missing").exists()
    with creation_lock("postgresql://user@host/db"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db.lock"]
