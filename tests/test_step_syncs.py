"""A training step never makes the host wait for the device, except on the steps Lightning logs.

On CPU the test patches the points where a tensor's value reaches Python (`item`, `bool`, `cpu`,
`tolist`, `numpy`, `float`, `int`) and records the training step each one happened in; on a GPU
(tests/test_gpu.py) `torch.cuda.set_sync_debug_mode("error")` checks the same for real.
"""

import csv
import inspect
from collections import defaultdict

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from imdb_lightning.models.base import NonFiniteLossError, logs_this_step
from imdb_lightning.models.classifier import SentimentClassifier
from imdb_lightning.models.encoders import ENCODERS, ScratchRNNEncoder, named_encoder
from imdb_lightning.models.language_model import LanguageModel

SYNC_POINTS = ("item", "__bool__", "cpu", "tolist", "numpy", "__float__", "__int__", "__index__")
EVERY = 5  # log_every_n_steps in these fits
STEPS = 14


class StepSyncs(L.Callback):
    """Counts the values read on the host in each training step (from its batch's start to the next one's)."""

    def __init__(self, monkeypatch):
        self.step, self.reads = None, defaultdict(list)
        for name in SYNC_POINTS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, original))

    def _counting(self, name, original):
        def read(tensor, *args, **kwargs):
            if self.step is not None:
                self.reads[self.step].append((name, _origin()))
            return original(tensor, *args, **kwargs)

        return read

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.step = trainer.global_step
        self.logged = logs_this_step(trainer)

    def on_train_epoch_end(self, trainer, module):
        self.step = None

    def device_reads(self, step: int) -> list:
        # On CPU every tensor is on the host, so two reads of values that stay on the host on a GPU too
        # count here and are left out: Lightning's every-step re-read of the progress bar's values (host
        # copies made on a logged step) and torch's Adam reading its step count (kept on the CPU).
        return [read for read in self.reads[step] if read[1] not in HOST_HELD]


HOST_HELD = ("progress bar", "optimizer step count")


def _origin() -> str:
    for frame in inspect.stack()[2:]:
        if frame.function == "metrics" and frame.filename.endswith("logger_connector/result.py"):
            return "progress bar"
        if frame.function == "_get_value" and frame.filename.endswith("torch/optim/optimizer.py"):
            return "optimizer step count"
    return " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in inspect.stack()[2:6])


def batches(n: int, vocab: int = 60, length: int = 12, size: int = 8) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(2, vocab, (size, length), generator=g),
             "lengths": torch.randint(1, length + 1, (size,), generator=g),
             "labels": torch.randint(0, 2, (size,), generator=g), "groups": torch.arange(size)} for _ in range(n)]


def lm_batches(n: int, vocab: int = 60) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab, (n, 4, 13), generator=g)
    return [{"input_ids": window[:, :-1], "targets": window[:, 1:]} for window in ids]


def fit(module, data, monkeypatch, tmp_path, **trainer_args) -> StepSyncs:
    counter = StepSyncs(monkeypatch)
    trainer = L.Trainer(max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=EVERY,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        logger=L.pytorch.loggers.CSVLogger(tmp_path), callbacks=[counter], **trainer_args)
    trainer.fit(module, DataLoader(data, batch_size=None))
    assert trainer.global_step == len(data)
    return counter


def tiny(name: str = "gru"):
    recurrent = {"hidden_size": 8, "pooling": "max_mean"} if name != "nbow" else {}
    return named_encoder(name, vocab_size=60, embed_dim=8, **recurrent)


MODELS = {
    **{name: lambda name=name: SentimentClassifier(tiny(name), scheduler=None) for name in ENCODERS},
    "scratch_rnn": lambda: SentimentClassifier(ScratchRNNEncoder(vocab_size=60, embed_dim=8, hidden_size=8), scheduler=None),
    "gru_adversarial": lambda: SentimentClassifier(tiny(), adversarial=0.1, scheduler=None),
    "gru_unfreezing": lambda: SentimentClassifier(tiny(), gradual_unfreezing=True, lr_decay=2.6, scheduler=None),
}


@pytest.mark.parametrize("name", MODELS)
def test_no_host_read_except_on_logged_steps(name, monkeypatch, tmp_path):
    counter = fit(MODELS[name](), batches(STEPS), monkeypatch, tmp_path)
    logged = {step for step in range(STEPS) if (step + 1) % EVERY == 0}
    for step in sorted(set(range(STEPS)) - logged):
        assert counter.device_reads(step) == [], f"step {step} read values on the host: {counter.device_reads(step)}"
    # logged steps read: the deferred figures, moved to the host at once, and Lightning's logger writing them
    for step in logged:
        assert [name for name, _ in counter.device_reads(step)][:1] == ["cpu"], counter.device_reads(step)


def test_language_model_steps_read_nothing(monkeypatch, tmp_path):
    encoder = named_encoder("lstm", vocab_size=60, embed_dim=8, hidden_size=8)
    counter = fit(LanguageModel(encoder), lm_batches(STEPS), monkeypatch, tmp_path)
    for step in range(STEPS):
        if (step + 1) % EVERY:
            assert counter.device_reads(step) == [], step


def test_logged_steps_carry_that_steps_loss(monkeypatch, tmp_path):
    """train/loss in the logs is the loss of the step it is logged at, as when it was read every step."""
    seen = {}

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen[trainer.global_step - 1] = float(outputs["loss"])

    model = SentimentClassifier(named_encoder("gru", vocab_size=60, embed_dim=8, hidden_size=8), scheduler=None)
    trainer = L.Trainer(max_epochs=1, num_sanity_val_steps=0, log_every_n_steps=EVERY, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, logger=L.pytorch.loggers.CSVLogger(tmp_path),
                        callbacks=[Losses()])
    trainer.fit(model, DataLoader(batches(STEPS), batch_size=None))
    rows = [r for r in csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))) if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == [step for step in range(STEPS) if (step + 1) % EVERY == 0]
    for row in rows:
        assert float(row["train/loss"]) == pytest.approx(seen[int(row["step"])], abs=1e-6)
    epoch = [r for r in csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))) if r.get("train/loss_epoch")]
    assert float(epoch[0]["train/loss_epoch"]) == pytest.approx(sum(seen.values()) / len(seen), abs=1e-5)  # equal batches


def test_a_non_finite_loss_between_logged_steps_stops_at_the_next_read(monkeypatch, tmp_path):
    class Poison(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 6:  # step 6 is the first with a NaN loss; step 9 is the next logged one
                module.encoder.embedding.weight.data.fill_(float("nan"))

    model = SentimentClassifier(named_encoder("gru", vocab_size=60, embed_dim=8, hidden_size=8), scheduler=None)
    with pytest.raises(NonFiniteLossError, match=r"became nan at step 6 \(epoch 0\)"):
        L.Trainer(max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=EVERY, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[Poison()],
                  ).fit(model, DataLoader(batches(STEPS), batch_size=None))
