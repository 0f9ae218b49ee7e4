"""The same behaviour on a CUDA GPU: fit, test, predict, export parity and padding invariance.

Skipped where no GPU is present (CI has none); on a GPU machine run `pytest -m gpu`.
"""

import os

import lightning as L
import pytest
import torch

from conftest import QUICKSTART, RECURRENT_PRESETS, SMALL
from imdb_lightning.cli import cli_main
from imdb_lightning.models.base import logs_this_step
from imdb_lightning.models.classifier import SentimentClassifier
from imdb_lightning.models.encoders import ENCODERS, RecurrentEncoder, named_encoder
from imdb_lightning.runs import last_checkpoint, run_folders

# A GPU check run where a GPU is expected (.ci/gpu sets IMDB_LIGHTNING_REQUIRE_GPU=1) fails without one, never skips.
REQUIRED = bool(os.environ.get("IMDB_LIGHTNING_REQUIRE_GPU"))
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available() and not REQUIRED, reason="no CUDA GPU here")]
GPU = ["--trainer.accelerator", "gpu", "--trainer.devices", "1"]


@pytest.fixture(autouse=True)
def full_fp32(monkeypatch):
    # cuDNN runs RNNs in TF32 by default on Ampere and later: ~1e-4 relative error (seen on an H100),
    # which is rounding, not a padding leak; compare in full fp32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("name", RECURRENT_PRESETS)
def test_padding_invariance_on_the_gpu(name, packed):
    torch.manual_seed(0)
    encoder = RecurrentEncoder(vocab_size=50, embed_dim=8, hidden_size=8, num_layers=2, pooling="max_mean", packed=packed,
                               **RECURRENT_PRESETS[name]).cuda().eval()
    ids = torch.randint(2, 50, (3, 12), device="cuda")  # (batch, time)
    lengths = torch.tensor([12, 7, 3], device="cuda")
    ids[1, 7:] = ids[2, 3:] = 0
    with torch.no_grad():
        together = encoder(ids, lengths)  # (batch, output_dim)
        alone = torch.cat([encoder(ids[i : i + 1, : int(n)], lengths[i : i + 1]) for i, n in enumerate(lengths)])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


def test_fit_test_predict_and_export_on_the_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli_main(["fit", "--config", str(QUICKSTART), *SMALL, *GPU])
    ckpt = last_checkpoint(run_folders(tmp_path / "lightning_logs" / "quickstart")[-1])
    cli_main(["test", "--config", str(QUICKSTART), *SMALL, *GPU, "--ckpt_path", str(ckpt)])

    import imdb_lightning

    texts = ["a wonderful film .", "the plot was not good .", ""]
    on_gpu = imdb_lightning.load(ckpt, device="cuda").predict(texts)
    on_cpu = imdb_lightning.load(ckpt).predict(texts)
    assert on_gpu == pytest.approx(on_cpu, abs=1e-4)
    capsys.readouterr()
    cli_main(["predict", "--ckpt_path", str(ckpt), "--device", "cuda", *texts])
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]  # label, probability, text
    assert [text for _, _, text in rows] == texts
    assert [float(p) for _, p, _ in rows] == pytest.approx(on_gpu, abs=1e-4)
    assert [label for label, _, _ in rows] == ["positive" if float(p) >= 0.5 else "negative" for _, p, _ in rows]

    cli_main(["export", "--ckpt_path", str(ckpt), "--format", "torchscript", "--out", str(tmp_path / "exported")])
    from imdb_lightning.serve.runtime import ExportedClassifier

    assert ExportedClassifier(tmp_path / "exported").predict(texts) == pytest.approx(on_gpu, abs=1e-4)

    # a stack with the linear reference, the run predicting on the GPU
    from imdb_lightning.tools.linear import main as linear

    [stacked] = linear(["--combine", str(ckpt.parents[1]), "--device", "cuda", "--logdir", str(tmp_path / "stacks")])
    assert stacked["model"] == "nbsvm+quickstart" and 0.5 <= stacked["val"]["val/acc"] <= 1
    # and the stack as a model, its run on the GPU: the same probabilities as on the CPU
    stack_gpu, stack_cpu = imdb_lightning.load(stacked["folder"], device="cuda"), imdb_lightning.load(stacked["folder"])
    assert stack_gpu.predict(texts) == pytest.approx(stack_cpu.predict(texts), abs=1e-4)


class NoSyncBetweenLogs(L.Callback):
    """torch raises on any host-device sync while a training step that Lightning does not log runs
    (from its batch's start to the next one's, the next batch's copy to the GPU included)."""

    def __init__(self):
        self.checked = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        quiet = not logs_this_step(trainer) and trainer.global_step > 0  # (step 0: cuDNN and Adam set up)
        torch.cuda.set_sync_debug_mode("error" if quiet else "default")
        self.checked += quiet

    def on_train_epoch_end(self, trainer, module):
        torch.cuda.set_sync_debug_mode("default")

    def on_exception(self, trainer, module, exception):
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("name", [*ENCODERS, "gru_adversarial"])
def test_training_steps_do_not_sync_with_the_host(name):
    from torch.utils.data import DataLoader

    settings = {"hidden_size": 8, "pooling": "max_mean"} if name != "nbow" else {}
    encoder = named_encoder(name.split("_")[0], vocab_size=60, embed_dim=8, **settings)
    model = SentimentClassifier(encoder, scheduler=None, adversarial=0.1 if "adversarial" in name else 0.0)
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(2, 60, (8, 12), generator=g), "lengths": torch.randint(1, 13, (8,), generator=g),
                "labels": torch.randint(0, 2, (8,), generator=g)} for _ in range(12)]
    watch = NoSyncBetweenLogs()
    trainer = L.Trainer(accelerator="gpu", devices=1, max_epochs=1, log_every_n_steps=5, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[watch])
    trainer.fit(model, DataLoader(batches, batch_size=None, pin_memory=True))
    assert trainer.global_step == 12 and watch.checked >= 8
