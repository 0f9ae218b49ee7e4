"""Shared test helpers: generated data only (no download, nothing from ../shared)."""

import os
import signal
import socket
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


class Killed(BaseException):
    """Like a SIGKILL, as far as the run is concerned: no handler writes anything."""
