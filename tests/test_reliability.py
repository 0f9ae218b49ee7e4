"""Odd data is read the documented way; a non-finite loss stops cleanly; runs repeat exactly.
(Bad input through the command line: test_bad_inputs.py; interruption and resume: test_resume.py.)"""

from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import quick_trainer
from imdb_lightning.data.datamodule import IMDBDataModule
from imdb_lightning.models.base import NonFiniteLossError
from imdb_lightning.models.classifier import SentimentClassifier
from imdb_lightning.models.encoders import RecurrentEncoder


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_label_spellings_are_mapped(tmp_path):
    spellings = ["pos", "neg", "Positive", "NEGATIVE", "1", "0"] * 4
    rows = "text,label\n" + "\n".join(f"review {i},{v}" for i, v in enumerate(spellings))
    dm = IMDBDataModule(train_files=write(tmp_path / "l.csv", rows), cache_dir=str(tmp_path / "c"), vocab_size=50)
    labels = sorted(dm.dataset("train").labels.tolist() + dm.dataset("val").labels.tolist())
    assert labels == [0] * 12 + [1] * 12


def test_empty_and_huge_reviews_are_defined(tmp_path):
    rows = "text,label\n" + '"   ",1\n"",0\n' + f'"{"word " * 200_000}",1\n' + "\n".join(f"ok {i},{i % 2}" for i in range(20))
    dm = IMDBDataModule(train_files=write(tmp_path / "e.csv", rows), cache_dir=str(tmp_path / "c"), vocab_size=50, max_length=50)
    data = dm.dataset("train")
    assert int(data.lengths.min()) == 1 and int(data.lengths.max()) == 50  # empty -> one <unk>; 1 MB -> cut


# --- non-finite loss, determinism --------------------------------------------------------------
class PoisonWeights(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 3:
            module.encoder.embedding.weight.data.fill_(float("nan"))


def tiny_fit(dm, tmp_path, callbacks=(), **trainer_args):
    L.seed_everything(0, verbose=False)
    model = SentimentClassifier(RecurrentEncoder(vocab_size=500, embed_dim=16, hidden_size=8, cell="gru"))
    trainer = quick_trainer(tmp_path, max_epochs=2, limit_train_batches=6, limit_val_batches=3, callbacks=list(callbacks),
                            **trainer_args)
    trainer.fit(model, dm)
    return trainer


def test_non_finite_loss_stops_naming_the_step_and_keeps_checkpoints(synthetic, tmp_path):
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True, save_top_k=0)
    with pytest.raises(NonFiniteLossError, match=r"became nan at step 3 \(epoch 0\)"):
        tiny_fit(synthetic(), tmp_path, callbacks=[saver, PoisonWeights()], enable_checkpointing=True)
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    # Metric states that collect a list (the training AUROC's scores) are lists of tensors.
    tensors = [t for v in ckpt["state_dict"].values() for t in (v if isinstance(v, list) else [v])]
    assert all(torch.isfinite(t).all() for t in tensors)


def test_same_seed_same_metrics(synthetic, tmp_path):
    first = {k: v.item() for k, v in tiny_fit(synthetic(), tmp_path).callback_metrics.items()}
    second = {k: v.item() for k, v in tiny_fit(synthetic(), tmp_path).callback_metrics.items()}
    assert first == second and "val/acc" in first
