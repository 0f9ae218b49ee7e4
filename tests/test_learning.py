import lightning as L
import pytest

from conftest import ENCODERS
from imdb_lightning.encoders import RecurrentEncoder
from imdb_lightning.model import SentimentClassifier


def quick_trainer(tmp_path, **overrides):
    settings = dict(
        max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, deterministic=True,
    )
    return L.Trainer(**{**settings, **overrides})


@pytest.mark.parametrize("name", ENCODERS)
def test_every_encoder_learns_word_order_on_synthetic_reviews(name, synthetic, tmp_path):
    L.seed_everything(0, verbose=False)
    dm = synthetic(synthetic_size=2000, synthetic_median_words=30, max_length=100)
    encoder = RecurrentEncoder(vocab_size=500, embed_dim=32, hidden_size=32, **ENCODERS[name])
    model = SentimentClassifier(encoder, optimizer=lambda p: __import__("torch").optim.Adam(p, lr=3e-3))
    trainer = quick_trainer(tmp_path)
    trainer.fit(model, dm)
    accuracy = trainer.validate(model, dm, verbose=False)[0]["val/acc"]
    assert accuracy >= 0.90, f"{name}: {accuracy:.3f}"


def test_one_cycle_schedule_is_sized_to_the_run_and_stepped_per_batch(synthetic, tmp_path):
    import functools

    import torch

    L.seed_everything(0, verbose=False)
    dm = synthetic(synthetic_size=600)
    encoder = RecurrentEncoder(vocab_size=500, embed_dim=16, hidden_size=16, cell="gru")
    schedule = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.01)
    model = SentimentClassifier(encoder, scheduler=schedule)
    used = []  # the learning rate each training batch ran with

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            used.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = quick_trainer(tmp_path, max_epochs=2, limit_train_batches=4, limit_val_batches=1, callbacks=[Record()])
    trainer.fit(model, dm)
    config = trainer.lr_scheduler_configs[0]
    assert config.interval == "step" and config.scheduler.total_steps == 8
    assert len(used) == 8 and len(set(used)) == 8  # a new rate for every batch
    assert 0.009 < max(used) <= 0.01 and used[0] < 0.01 / 10 and used[-1] < 0.01 / 1000  # up to max_lr, then annealed
