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
