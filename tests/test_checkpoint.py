import lightning as L
import pytest
import torch

import imdb_lightning
from conftest import quick_trainer
from imdb_lightning.errors import UserError
from imdb_lightning.models.classifier import SentimentClassifier
from imdb_lightning.models.encoders import RecurrentEncoder


@pytest.fixture
def checkpoint(synthetic, tmp_path):
    L.seed_everything(0, verbose=False)
    dm = synthetic()
    model = SentimentClassifier(RecurrentEncoder(vocab_size=500, embed_dim=16, hidden_size=8, bidirectional=True))
    trainer = quick_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=2)
    trainer.fit(model, dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return path, model, dm


def test_checkpoint_is_plain_data_and_classifies_raw_text(checkpoint):
    path, model, dm = checkpoint
    ckpt = torch.load(path, weights_only=True)  # no pickled classes anywhere
    assert ckpt["hyper_parameters"]["encoder"]["init_args"]["bidirectional"] is True
    assert isinstance(ckpt["IMDBDataModule"]["tokenizer"], str)

    predictor = imdb_lightning.load(path)
    texts = ["the plot was not good .", "The acting was wonderful!<br />", "", "x " * 5000, "🎬 très bien"]
    probs = predictor.predict(texts)
    assert len(probs) == len(texts) and all(0.0 <= p <= 1.0 for p in probs)
    # input order is kept although reviews are sorted by length inside
    assert predictor.predict(texts[::-1]) == pytest.approx(probs[::-1], abs=1e-6)
    # same numbers as the trained model on the datamodule's own encoding
    batch = next(iter(dm.val_dataloader()))
    model.eval()
    with torch.no_grad():
        expected = model(batch["input_ids"][:1], batch["lengths"][:1]).sigmoid().item()
    review = dm.reviews("val").texts[dm.val_dataloader().batch_sampler.batches()[0][0]]
    assert predictor.predict([review])[0] == pytest.approx(expected, abs=1e-5)


def test_load_rejects_missing_truncated_and_foreign_files(checkpoint, tmp_path):
    path, _, _ = checkpoint
    with pytest.raises(UserError, match="no such checkpoint"):
        imdb_lightning.load(tmp_path / "missing.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        imdb_lightning.load(truncated)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="not an imdb-lightning checkpoint"):
        imdb_lightning.load(foreign)
    with pytest.raises(TypeError, match="list of texts"):
        imdb_lightning.load(path).predict("a single string")
