"""Bad input gets one clear error; interrupted training loses nothing; runs repeat exactly."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from imdb_lightning.cli import cli_main
from imdb_lightning.data import IMDBDataModule
from imdb_lightning.encoders import RecurrentEncoder
from imdb_lightning.errors import DataError
from imdb_lightning.model import NonFiniteLossError, SentimentClassifier

QUICKSTART = Path(__file__).parents[1] / "experiments" / "quickstart.yaml"


# --- bad data files ----------------------------------------------------------------------------
def write(path: Path, text: str, mode="w") -> str:
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.csv", None, r"missing.csv: no such file"),
        ("empty.csv", "", r"empty.csv: the file is empty"),
        ("cols.csv", "review,sentiment\ngood,1\n", r"missing column\(s\) label, text; columns found: review, sentiment"),
        ("labels.csv", "text,label\ngood,pos\nbad,meh\n", r"label 'meh' in row 1"),
        ("numbers.csv", "text,label\ngood,1\nbad,7\n", r"label 7 in row 1"),
        ("onlypos.csv", "text,label\ngood,1\ngreat,positive\n", r"only label 1; it needs both classes"),
        ("notes.txt", "hello", r"unknown file type '.txt'"),
        ("bad.csv", b"text,label\n\xff\xfe broken,1\nok,0\n", r"bad.csv: cannot read it as csv"),
    ],
)
def test_bad_training_files_name_the_problem(tmp_path, name, content, message):
    path = write(tmp_path / name, content) if content is not None else str(tmp_path / name)
    dm = IMDBDataModule(train_files=path, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=message):
        dm.dataset("train")


def test_label_spellings_are_mapped(tmp_path):
    rows = "text,label\n" + "\n".join(f"review {i},{v}" for i, v in enumerate(["pos", "neg", "Positive", "NEGATIVE", "1", "0"] * 4))
    dm = IMDBDataModule(train_files=write(tmp_path / "l.csv", rows), cache_dir=str(tmp_path / "c"), vocab_size=50)
    labels = sorted(dm.dataset("train").labels.tolist() + dm.dataset("val").labels.tolist())
    assert labels == [0] * 12 + [1] * 12


def test_empty_and_huge_reviews_are_defined(tmp_path):
    rows = "text,label\n" + '"   ",1\n"",0\n' + f'"{"word " * 200_000}",1\n' + "\n".join(f"ok {i},{i % 2}" for i in range(20))
    dm = IMDBDataModule(train_files=write(tmp_path / "e.csv", rows), cache_dir=str(tmp_path / "c"), vocab_size=50, max_length=50)
    data = dm.dataset("train")
    assert int(data.lengths.min()) == 1 and int(data.lengths.max()) == 50  # empty -> one <unk>; 1 MB -> cut


def test_aclimdb_folder_missing_neg(tmp_path):
    (tmp_path / "aclImdb" / "train" / "pos").mkdir(parents=True)
    dm = IMDBDataModule(aclimdb_dir=str(tmp_path / "aclImdb"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match=r"train/neg: missing"):
        dm.dataset("train")


def test_test_without_test_data_says_so(synthetic, tmp_path):
    dm = IMDBDataModule(train_files=write(tmp_path / "t.csv", "text,label\na,1\nb,0\nc,1\nd,0\n"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match="--data.test_files"):
        dm.dataset("test")


# --- the command line turns errors into one line -----------------------------------------------
def run_cli(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        cli_main(args)
    return str(exit.value.code)


SMALL = ["--data.synthetic_size", "200", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
         "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"]


def test_cli_bad_file_is_one_line(tmp_path, monkeypatch, cache_dir):
    message = run_cli(["fit", "--config", str(QUICKSTART), "--data.source", "files", "--data.train_files", "nope.parquet"], tmp_path, monkeypatch)
    assert message == "imdb-lightning: error: nope.parquet: no such file"


def test_cli_bad_options_are_named(tmp_path, monkeypatch, cache_dir, capsys):
    message = run_cli(["fit", "--config", str(QUICKSTART), "--data.max_length", "0"], tmp_path, monkeypatch)
    assert "data.max_length must be at least 1" in message
    message = run_cli(["fit", "--config", str(QUICKSTART), "--model.encoder.init_args.cell", "transformer"], tmp_path, monkeypatch)
    assert "transformer" in capsys.readouterr().err and message == "2"  # jsonargparse lists rnn, lstm, gru
    message = run_cli(
        ["fit", "--config", str(QUICKSTART), "--data.cache_dir", cache_dir, "--model.monitor", "val/accuracy", *SMALL],
        tmp_path, monkeypatch,
    )
    assert message.startswith("imdb-lightning: error: ") and "val/accuracy" in message and "val/loss" in message


def test_predict_inputs(tmp_path, monkeypatch):
    assert "nope.txt: no such file" in run_cli(["predict", "--ckpt_path", "x.ckpt", "--file", "nope.txt"], tmp_path, monkeypatch)
    (tmp_path / "junk.ckpt").write_bytes(os.urandom(2000))
    assert "not a readable checkpoint" in run_cli(["predict", "--ckpt_path", "junk.ckpt", "text"], tmp_path, monkeypatch)


# --- non-finite loss, determinism --------------------------------------------------------------
class PoisonWeights(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 3:
            module.encoder.embedding.weight.data.fill_(float("nan"))


def tiny_fit(dm, tmp_path, callbacks=(), **trainer_args):
    L.seed_everything(0, verbose=False)
    model = SentimentClassifier(RecurrentEncoder(vocab_size=500, embed_dim=16, hidden_size=8, cell="gru"))
    trainer = L.Trainer(
        max_epochs=2, limit_train_batches=6, limit_val_batches=3, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, deterministic=True, callbacks=list(callbacks),
        **trainer_args,
    )
    trainer.fit(model, dm)
    return trainer


def test_non_finite_loss_stops_naming_the_step_and_keeps_checkpoints(synthetic, tmp_path):
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True, save_top_k=0)
    with pytest.raises(NonFiniteLossError, match=r"became nan at step 3 \(epoch 0\)"):
        tiny_fit(synthetic(), tmp_path, callbacks=[saver, PoisonWeights()], enable_checkpointing=True)
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


def test_same_seed_same_metrics(synthetic, tmp_path):
    first = {k: v.item() for k, v in tiny_fit(synthetic(), tmp_path).callback_metrics.items()}
    second = {k: v.item() for k, v in tiny_fit(synthetic(), tmp_path).callback_metrics.items()}
    assert first == second and "val/acc" in first


# --- interruption and resume -------------------------------------------------------------------
RESUME_CONFIG = """
trainer:
  max_epochs: 3
  enable_progress_bar: false
  logger: {init_args: {save_dir: logs, name: resume}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {monitor: val/acc, mode: max, save_last: true, filename: best}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {every_n_train_steps: 5, save_top_k: 0, save_last: true}
    - class_path: imdb_lightning.callbacks.CheckpointOnInterrupt
data: {synthetic_size: 1200, batch_size: 32, cache_dir: CACHE}
"""


def fit_process(tmp_path, *extra) -> subprocess.Popen:
    config = tmp_path / "resume.yaml"
    config.write_text(RESUME_CONFIG.replace("CACHE", str(tmp_path / "cache")))
    cmd = [sys.executable, "-m", "imdb_lightning", "fit", "--config", str(QUICKSTART), "--config", str(config), *extra]
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_step(path: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.is_file():
            try:
                if torch.load(path, weights_only=True)["global_step"] >= step:
                    return
            except Exception:  # caught between rename and read; try again
                pass
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint at step {step} appeared; output:\n{proc.communicate()[0][-3000:]}")


def finished(tmp_path: Path, version: int) -> dict:
    ckpt = torch.load(tmp_path / f"logs/resume/version_{version}/checkpoints/last.ckpt", weights_only=True)
    best = [cb for key, cb in ckpt["callbacks"].items() if "val/acc" in key][0]
    return {"step": ckpt["global_step"], "epoch": ckpt["epoch"], "best": float(best["best_model_score"])}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_interrupted_run_resumes_to_the_same_end(tmp_path, sig):
    reference = fit_process(tmp_path)
    assert reference.wait(300) == 0, reference.communicate()[0][-3000:]
    expected = finished(tmp_path, 0)

    run = fit_process(tmp_path)
    last = tmp_path / "logs/resume/version_1/checkpoints/last.ckpt"
    wait_for_step(last, 40, run)  # mid-way through the second epoch (34 steps each)
    run.send_signal(sig)
    output = run.communicate(timeout=60)[0]
    if sig == signal.SIGINT:
        assert "Interrupted at step" in output and "--ckpt_path last" in output
    interrupted = torch.load(last, weights_only=True)  # never a broken file
    assert 40 <= interrupted["global_step"] < expected["step"]

    resumed = fit_process(tmp_path, "--ckpt_path", "last")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert "version_1/checkpoints/last.ckpt" in output
    got = finished(tmp_path, 1)
    assert (got["step"], got["epoch"]) == (expected["step"], expected["epoch"])
    assert got["best"] == pytest.approx(expected["best"], abs=0.05)


def test_resume_takes_the_newest_last_checkpoint(tmp_path):
    import os

    from imdb_lightning.callbacks import last_checkpoint

    assert last_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    epoch_end, every_200_steps = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "checkpoints" / "last-v1.ckpt"
    epoch_end.write_bytes(b"a"), every_200_steps.write_bytes(b"b")
    os.utime(epoch_end, (1000, 1000))
    os.utime(every_200_steps, (2000, 2000))
    assert last_checkpoint(tmp_path) == every_200_steps
    os.utime(epoch_end, (3000, 3000))
    assert last_checkpoint(tmp_path) == epoch_end
