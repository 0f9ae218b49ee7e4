"""Run folders: version numbers, the newest checkpoint of a run and of an experiment, records, whole-or-nothing writes."""

import json
import os
import threading
from pathlib import Path

import pytest

from imdb_lightning.errors import UserError
from imdb_lightning.runs import (
    atomic_write,
    best_checkpoint,
    claim_version,
    experiment_root,
    last_checkpoint,
    newest_checkpoint,
    read_record,
    run_folders,
    run_version,
    write_record,
)


def touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


@pytest.mark.parametrize("name, number", [("version_0", 0), ("version_12", 12), ("version_", None), ("version_x", None),
                                          ("version_-1", None), ("my_version_3", None), ("v_3", None), ("version3", None)])
def test_run_version_reads_only_version_n(name, number):
    assert run_version(Path("logs") / name) == number


def test_run_folders_are_the_version_folders_in_number_order(tmp_path):
    for n in (10, 2, 9, 0):
        (tmp_path / f"version_{n}").mkdir()
    (tmp_path / "version_5").write_text("a file, not a run")
    (tmp_path / "version_x").mkdir()
    (tmp_path / "other").mkdir()
    assert [p.name for p in run_folders(tmp_path)] == ["version_0", "version_2", "version_9", "version_10"]
    assert run_folders(tmp_path / "missing") == []


def test_claim_version_takes_the_next_number_and_never_one_twice(tmp_path):
    root = tmp_path / "logs" / "exp"
    assert claim_version(root) == 0 and (root / "version_0").is_dir()  # the experiment's folders are made too
    (root / "version_7").mkdir()
    assert claim_version(root) == 8
    claimed = []
    threads = [threading.Thread(target=lambda: claimed.append(claim_version(root))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(9, 17))
    # a number taken by something that is not a run folder (here a file) is passed over, one at a time
    for taken, expected in (((0, 1), 2), ((0, 2), 1)):
        other = tmp_path / f"taken{expected}"
        other.mkdir()
        for n in taken:
            (other / f"version_{n}").write_text("not a run")
        assert claim_version(other) == expected


def test_the_newest_last_and_best_checkpoint_of_a_run(tmp_path):
    run = tmp_path / "version_0"
    assert last_checkpoint(run) is None and best_checkpoint(run) is None
    touch(run / "checkpoints" / "last.ckpt", 100)
    newer = touch(run / "checkpoints" / "last-v1.ckpt", 200)
    best = touch(run / "checkpoints" / "best-epoch00-acc0.5000.ckpt", 400)  # the newest file, not the last name
    touch(run / "checkpoints" / "best-epoch01-acc0.6000.ckpt", 300)
    touch(run / "checkpoints" / "other.ckpt", 500)
    assert last_checkpoint(run) == newer and best_checkpoint(run) == best


def test_newest_checkpoint_is_the_newest_run_that_has_one(tmp_path):
    old_best = touch(tmp_path / "version_0" / "checkpoints" / "best.ckpt", 100)
    old_last = touch(tmp_path / "version_0" / "checkpoints" / "last.ckpt", 100)
    new_last = touch(tmp_path / "version_1" / "checkpoints" / "last.ckpt", 50)  # older file, newer run
    (tmp_path / "version_2").mkdir()  # a run that wrote nothing yet
    assert newest_checkpoint(tmp_path, "best") == (tmp_path / "version_0", old_best)
    assert newest_checkpoint(tmp_path, "last") == (tmp_path / "version_1", new_last)
    assert newest_checkpoint(tmp_path, "best_or_last") == (tmp_path / "version_1", new_last)
    touch(tmp_path / "version_1" / "checkpoints" / "best.ckpt", 10)
    assert newest_checkpoint(tmp_path, "best_or_last") == (tmp_path / "version_1", tmp_path / "version_1" / "checkpoints" /
                                                           "best.ckpt")
    assert newest_checkpoint(tmp_path / "none", "last") is None
    assert old_last.is_file()


def test_experiment_root_is_save_dir_and_name_under_the_root_dir_when_relative(tmp_path):
    assert experiment_root(None, "x") is None and experiment_root("", "x") is None
    assert experiment_root("logs", "gru") == Path("logs/gru")
    assert experiment_root("logs", None) == Path("logs/default")
    assert experiment_root("logs", "gru", "elsewhere") == Path("elsewhere/logs/gru")
    assert experiment_root(str(tmp_path), "gru", "elsewhere") == tmp_path / "gru"


def test_records_are_read_back_and_bad_ones_are_named(tmp_path):
    assert read_record(tmp_path) == {}
    write_record(tmp_path, {"status": "finished", "val": {"val/acc": 0.5}})
    assert read_record(tmp_path) == {"status": "finished", "val": {"val/acc": 0.5}}
    assert read_record(str(tmp_path)) == json.loads((tmp_path / "run.json").read_text())
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(UserError, match=r"run\.json: not readable JSON"):
        read_record(tmp_path)
    (tmp_path / "run.json").write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match=r"run\.json: not readable JSON"):
        read_record(tmp_path)
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(UserError, match=r"run\.json: holds a list, not a run record"):
        read_record(tmp_path)


def test_an_atomic_write_is_whole_or_not_there(tmp_path):
    target = tmp_path / "deep" / "er" / "file.txt"
    atomic_write(target, lambda tmp: Path(tmp).write_text("first"))
    assert target.read_text() == "first"

    def fail(tmp):
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "first"  # the old file stays whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]  # and no temporary is left
    atomic_write(target, lambda tmp: Path(tmp).write_text("second"))
    assert target.read_text() == "second" and sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]
