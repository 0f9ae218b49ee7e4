"""Shared test helpers: generated data only (no download, nothing from ../shared)."""

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import lightning as L
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

from imdb_lightning.models.encoders import ENCODERS, RECURRENT  # noqa: E402  every encoder, parametrized over

ROOT = Path(__file__).parents[1]
EXPERIMENTS = ROOT / "experiments"
QUICKSTART = EXPERIMENTS / "quickstart.yaml"
RECURRENT_PRESETS = {name: ENCODERS[name][1] for name in RECURRENT}
# Shrink any experiment's fit, test or validate to a few batches (of whatever data it reads) ...
TINY_TRAINING = [
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2",
    "--trainer.limit_test_batches", "2", "--trainer.enable_progress_bar", "false",
]
# ... and to a few batches of synthetic data.
SMALL = ["--data.source", "synthetic", "--data.synthetic_size", "300", "--data.vocab_size", "300", "--data.max_length", "60",
         *TINY_TRAINING]
# The same as `sweep --set` overrides.
SMALL_SETS = [f"{SMALL[i][2:]}={SMALL[i + 1]}" for i in range(0, len(SMALL), 2)]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One tokenization cache for the whole session, away from the user's ~/.cache."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def synthetic(cache_dir):
    """A small synthetic IMDBDataModule factory; keyword arguments override its settings."""
    from imdb_lightning.data.datamodule import IMDBDataModule

    def make(**overrides):
        settings = dict(source="synthetic", synthetic_size=600, vocab_size=500, max_length=120, batch_size=32)
        return IMDBDataModule(cache_dir=cache_dir, **{**settings, **overrides})

    return make


def quick_trainer(tmp_path, **overrides) -> L.Trainer:
    """A Trainer without logger, checkpoints or progress output."""
    settings = dict(
        max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, deterministic=True,
    )
    return L.Trainer(**{**settings, **overrides})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_reviews(path: Path, texts: list[str], labels: list[int], movies=None) -> str:
    from imdb_lightning.data.sources import write_reviews as write

    return write(texts, labels, path, movies)


class Stop(L.Callback):
    """Stops the fit at a chosen moment: Ctrl-C (a real SIGINT to this process) or a kill."""

    def __init__(self, hook: str, step: int, error: type[BaseException]):
        self.hook, self.step, self.error = hook, step, error

    def _maybe(self, trainer, hook):
        if hook == self.hook and trainer.global_step == self.step:
            if self.error is KeyboardInterrupt:
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise self.error()

    def on_train_batch_start(self, trainer, *args):
        self._maybe(trainer, "batch_start")

    def on_train_batch_end(self, trainer, *args):
        self._maybe(trainer, "batch_end")

    def on_before_backward(self, trainer, *args):
        self._maybe(trainer, "mid_step")

    def on_train_epoch_start(self, trainer, *args):
        self._maybe(trainer, "epoch_start")


class CtrlCAt(L.Callback):
    """A real Ctrl-C (SIGINT to this process) as training step `step` starts; a callback the command line can add."""

    def __init__(self, step: int = 2):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class Killed(BaseException):
    """Like a SIGKILL, as far as the run is concerned: no handler writes anything."""


def not_here(reason: str):
    """A test this machine cannot run: skipped here, but a failure in CI (CI=1), which installs what it needs."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server from the system's own package (initdb + postgres), on a Unix socket:
    (socket folder, port)."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin")) + [os.path.dirname(shutil.which("initdb") or "/none/x")]
    found = [b for b in bins if os.path.isfile(os.path.join(b, "initdb")) and os.path.isfile(os.path.join(b, "postgres"))]
    if not found:
        not_here("no PostgreSQL server on this machine (initdb and postgres not found; apt install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        not_here("psycopg is not installed (pip install -e '.[postgres]')")
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the package's own user
        if shutil.which("runuser") is None or subprocess.run(["id", "postgres"], capture_output=True).returncode:
            not_here("running as root with no 'postgres' user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = tempfile.mkdtemp(prefix="imdb-pg-")
    os.chmod(root, 0o777)
    data = os.path.join(root, "data")
    port = free_port()
    subprocess.run([*as_user, f"{found[-1]}/initdb", "-D", data, "-U", "postgres", "--auth=trust"], check=True,
                   capture_output=True)
    server = subprocess.Popen([*as_user, f"{found[-1]}/postgres", "-D", data, "-k", root, "-p", str(port),
                               "-c", "listen_addresses=", "-c", "max_connections=200", "-c", "fsync=off"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import psycopg

        for _ in range(200):
            try:
                psycopg.connect(dbname="postgres", user="postgres", host=root, port=port).close()
                break
            except psycopg.OperationalError:
                time.sleep(0.1)
        else:
            pytest.fail("the PostgreSQL server did not start in 20 s")
        yield root, port
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A new, empty database on the session's PostgreSQL server, as a SQLAlchemy URL."""
    import psycopg

    root, port = postgres_server
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dbname="postgres", user="postgres", host=root, port=port, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@/{name}?host={root}&port={port}"
