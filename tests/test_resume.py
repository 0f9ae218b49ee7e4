"""last.ckpt is the newest state, and a resumed run is the run that was never stopped.

Each test stops a fit in another way (Ctrl-C between steps or in the middle of one, a kill after
an every-N-steps checkpoint, a kill at an epoch's end, a real SIGKILL of the command), resumes it
with `--ckpt_path last`, and compares every logged value at every step with an uninterrupted run.
"""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import QUICKSTART, Killed, Stop
from imdb_lightning.cli import cli_main
from imdb_lightning.runs import last_checkpoint

CONFIG = """
trainer:
  max_epochs: 3
  log_every_n_steps: 1
  enable_progress_bar: false
  logger: {init_args: {save_dir: LOGS, name: resume}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {monitor: val/acc, mode: max, filename: best}
    - class_path: imdb_lightning.callbacks.LastCheckpoint
      init_args: {every_n_train_steps: 5}
    - class_path: imdb_lightning.callbacks.RunRecord
    - class_path: lightning.pytorch.callbacks.EarlyStopping
      init_args: {monitor: val/loss, patience: 2, strict: false}
    - class_path: lightning.pytorch.callbacks.LearningRateMonitor
      init_args: {logging_interval: epoch}
model:
  dropout: 0.3
  encoder: {init_args: {embed_dropout: 0.2}}
  # halves the learning rate after every epoch (the loss never improves by 10): a missed step shows
  scheduler:
    class_path: torch.optim.lr_scheduler.ReduceLROnPlateau
    init_args: {mode: min, factor: 0.5, patience: 0, threshold: 10.0, threshold_mode: abs}
data: {synthetic_size: 500, batch_size: 32, cache_dir: CACHE}
"""
# adversarial training, a schedule stepped every batch and dropout everywhere: every random draw matters
TUNED = """
model:
  adversarial: 0.05
  scheduler:
    class_path: torch.optim.lr_scheduler.OneCycleLR
    init_args: {max_lr: 0.01}
"""
STEPS_PER_EPOCH = 15  # 450 training reviews in batches of 32


def configs(tmp_path: Path, recipe: str) -> list[str]:
    """--config arguments of a recipe: the quickstart, CONFIG, and TUNED on top for "tuned"."""
    args = ["--config", str(QUICKSTART)]
    for i, text in enumerate([CONFIG] + ([TUNED] if recipe == "tuned" else [])):
        path = tmp_path / f"resume{i}.yaml"
        path.write_text(text.replace("CACHE", str(tmp_path.parent / "cache")).replace("LOGS", str(tmp_path / "logs")))
        args += ["--config", str(path)]
    return args


def fit(tmp_path: Path, recipe: str, *extra: str, stop: Stop | None = None) -> None:
    args = ["fit", *configs(tmp_path, recipe), *extra]
    if stop is None:
        cli_main(args)
        return
    from imdb_lightning.training import make_cli

    cli = make_cli(args[1:], run=False)
    cli.trainer.callbacks.append(stop)
    try:
        with pytest.raises((SystemExit, Killed)):  # Lightning turns Ctrl-C into exit status 1
            cli.trainer.fit(cli.model, cli.datamodule)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores further Ctrl-C


def logged(run: Path) -> dict:
    """{(tag, step): value} over every event file of a run; a value logged twice must agree with itself."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    values = {}
    for file in sorted(run.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(file)).Load():
            for value in event.summary.value:
                if value.tag == "hp/wall_s":  # the fit's wall time: the one figure a resume cannot reproduce
                    continue
                if value.HasField("simple_value") or value.metadata.plugin_data.plugin_name == "scalars":
                    number = value.simple_value if value.HasField("simple_value") else float(
                        torch.tensor(list(value.tensor.float_val)).item())
                    key = (value.tag, event.step)
                    if key in values:
                        assert values[key] == pytest.approx(number, abs=1e-6), f"{key} logged twice, differently"
                    values[key] = number
    return values


def assert_same_run(reference: Path, resumed: Path) -> None:
    expected, got = logged(reference), logged(resumed)
    assert sorted(got) == sorted(expected)  # the same tags at the same steps
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6, rel=0), key
    ref, res = (torch.load(last_checkpoint(r), weights_only=True) for r in (reference, resumed))
    assert res["global_step"] == ref["global_step"] and res["epoch"] == ref["epoch"]
    for name, tensor in ref["state_dict"].items():
        torch.testing.assert_close(res["state_dict"][name], tensor, atol=1e-6, rtol=0, msg=name)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The uninterrupted runs, plain and tuned."""
    out = {}
    for name in ("plain", "tuned"):
        folder = tmp_path_factory.mktemp(name)
        fit(folder, name)
        out[name] = folder / "logs/resume/version_0"
    return out


@pytest.mark.parametrize(
    "recipe, hook, step, error, saved",
    [
        ("plain", "batch_start", 22, KeyboardInterrupt, 23),  # Ctrl-C as step 23 starts, mid-epoch
        ("tuned", "mid_step", 22, KeyboardInterrupt, 23),  # Ctrl-C inside step 23: it finishes, then stops
        ("tuned", "batch_end", 23, Killed, 20),  # killed 3 steps after the every-5-steps checkpoint
        # killed as epoch 2 starts: last.ckpt holds epoch 1's next-to-last step
        ("plain", "epoch_start", STEPS_PER_EPOCH, Killed, STEPS_PER_EPOCH - 1),
        ("tuned", "batch_end", 2 * STEPS_PER_EPOCH, Killed, 2 * STEPS_PER_EPOCH - 1),  # killed before an epoch's validation
        # killed early in epoch 3: the resume replays epoch 2's end, validation and plateau step
        ("plain", "batch_end", 2 * STEPS_PER_EPOCH + 3, Killed, 2 * STEPS_PER_EPOCH - 1),
    ],
    ids=["ctrl-c", "ctrl-c-mid-step", "kill-after-step-checkpoint", "kill-at-epoch-end", "kill-before-validation",
         "kill-after-epoch-end"],
)
def test_resume_reproduces_the_uninterrupted_run(references, tmp_path, recipe, hook, step, error, saved):
    fit(tmp_path, recipe, stop=Stop(hook, step, error))
    run = tmp_path / "logs/resume/version_0"
    assert torch.load(last_checkpoint(run), weights_only=True)["global_step"] == saved
    fit(tmp_path, recipe, "--ckpt_path", "last")
    assert not (tmp_path / "logs/resume/version_1").exists()  # resumed in its own folder
    assert_same_run(references[recipe], run)
    # each trained batch counted once, however far the run got past its last.ckpt before it stopped
    records = [json.loads((r / "run.json").read_text()) for r in (references[recipe], run)]
    assert records[1]["train_samples"] == records[0]["train_samples"] == 3 * 450
    # the first stretch of training says how it ended and what of it the resume kept
    first, second = records[1]["segments"]
    # (Killed passes through Lightning's handler, so the run sees it: a real kill -9 leaves "killed", tested below)
    assert first["status"] == ("interrupted" if error is KeyboardInterrupt else "crashed") and first["end_step"] >= saved
    assert second["status"] == "finished" and second["from_checkpoint"]["step"] == saved


def test_a_mid_epoch_resume_at_another_batch_size_is_refused_before_anything_is_written(tmp_path):
    # its position in the epoch is counted in batches: at another size it would train some reviews twice
    fit(tmp_path, "plain", stop=Stop("batch_start", 22, KeyboardInterrupt))
    run = tmp_path / "logs/resume/version_0"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(SystemExit) as exit:
        cli_main(["fit", *configs(tmp_path, "plain"), "--ckpt_path", "last", "--data.batch_size", "7"])
    assert re.search(r"^imdb-lightning: error: --data\.batch_size 7: \S+last\.ckpt was saved \d+ batches of \d+ into epoch "
                     r"\d+; resume with --data\.batch_size \d+", str(exit.value.code)), exit.value.code
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_schedule_sized_in_steps_is_not_stretched_by_a_resume(tmp_path):
    # OneCycleLR was sized to the run's steps: more epochs would step it past its end (a traceback inside torch)
    fit(tmp_path, "tuned", "--trainer.max_epochs", "1")
    run = tmp_path / "logs/resume/version_0"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(SystemExit) as exit:
        cli_main(["fit", *configs(tmp_path, "tuned"), "--ckpt_path", "last", "--trainer.max_epochs", "2"])
    assert re.search(rf"^imdb-lightning: error: --trainer\.max_epochs 2: the learning-rate schedule of \S+last\.ckpt is sized "
                     rf"in steps \(OneCycleLR\) to its run's {STEPS_PER_EPOCH} steps, with trainer\.max_epochs 1, and cannot be "
                     r"stretched or cut; resume with --trainer\.max_epochs 1", str(exit.value.code)), exit.value.code
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_fit_stopped_by_ctrl_c_exits_130_as_every_command_does(tmp_path):
    args = ["fit", *configs(tmp_path, "plain"), "--trainer.callbacks+=conftest.CtrlCAt", "--trainer.callbacks.step", "3"]
    try:
        with pytest.raises(SystemExit) as exit:
            cli_main(args)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores further Ctrl-C
    assert exit.value.code == 130  # as a script can tell from a crash (1)
    record = json.loads((tmp_path / "logs/resume/version_0/run.json").read_text())
    assert record["status"] == "interrupted" and record["segments"][0]["end_step"] == 4  # (step 3 finished first)


def test_last_checkpoint_is_the_final_model(references):
    for run in references.values():
        ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
        assert sorted(p.name for p in (run / "checkpoints").glob("last*")) == ["last.ckpt"]
        assert ckpt["global_step"] == 3 * STEPS_PER_EPOCH and ckpt["epoch"] == 3  # three epochs done
        record = __import__("json").loads((run / "run.json").read_text())
        assert record["global_step"] == ckpt["global_step"] and record["status"] == "finished"


def test_the_final_weights_are_the_trained_models(tmp_path):
    from imdb_lightning.training import make_cli

    cli = make_cli([*configs(tmp_path, "plain"), "--trainer.max_epochs", "1", "--trainer.max_steps", "12"], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)  # stops mid-epoch, at step 12, between two checkpoints
    ckpt = torch.load(tmp_path / "logs/resume/version_0/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == cli.trainer.global_step == 12
    weights = {k: v for k, v in cli.model.state_dict().items() if k.startswith(("encoder.", "head."))}
    assert weights
    for name, tensor in weights.items():
        assert torch.equal(ckpt["state_dict"][name], tensor), name


def test_run_record_after_a_mid_epoch_resume(references, tmp_path):
    import json

    fit(tmp_path, "plain", stop=Stop("batch_start", 22, KeyboardInterrupt))
    record_file = tmp_path / "logs/resume/version_0/run.json"
    interrupted = json.loads(record_file.read_text())
    assert interrupted["status"] == "interrupted" and "KeyboardInterrupt" in interrupted["error"]
    fit(tmp_path, "plain", "--ckpt_path", "last")
    record = json.loads(record_file.read_text())
    reference = json.loads((references["plain"] / "run.json").read_text())
    assert record["status"] == "finished" and "error" not in record
    assert record["train_samples"] == reference["train_samples"]  # every training review counted once... or twice
    # training time: both parts of the run, not the machine's uptime
    assert 0 < record["train_s"] < 10 * reference["train_s"] + 60
    assert record["train_samples_per_s"] > reference["train_samples_per_s"] / 10


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill -9", "ctrl-c"])
def test_the_command_survives_a_real_signal(references, tmp_path, sig):
    cmd = [sys.executable, "-m", "imdb_lightning", "fit", *configs(tmp_path, "plain")]
    run = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = tmp_path / "logs/resume/version_0/checkpoints/last.ckpt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        try:
            if torch.load(last, weights_only=True)["global_step"] >= 20:
                break
        except Exception:  # not there yet, or caught between write and rename
            pass
        time.sleep(0.1)
    run.send_signal(sig)
    output = run.communicate(timeout=120)[0]
    if sig == signal.SIGINT:
        assert "Interrupted at step" in output and "--ckpt_path last" in output and run.returncode == 130
    torch.load(last, weights_only=True)  # never a broken file
    resumed = subprocess.run([*cmd, "--ckpt_path", "last"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "version_0/checkpoints/last.ckpt" in resumed.stderr
    assert_same_run(references["plain"], tmp_path / "logs/resume/version_0")
    first, second = json.loads((tmp_path / "logs/resume/version_0/run.json").read_text())["segments"]
    assert first["status"] == ("killed" if sig == signal.SIGKILL else "interrupted")  # never "running" for good
    assert first["end_step"] == second["from_checkpoint"]["step"] if sig == signal.SIGKILL else first["end_step"] >= 20


def test_a_resumed_fit_applies_a_new_learning_rate_and_refuses_a_new_model_shape(tmp_path, cache_dir, monkeypatch, capsys):
    from conftest import SMALL

    monkeypatch.chdir(tmp_path)
    base = ["fit", "--config", str(QUICKSTART), *SMALL, "--data.cache_dir", cache_dir, "--model.scheduler", "null"]
    cli_main(base)
    run = tmp_path / "lightning_logs" / "quickstart" / "version_0"
    resume = [*base, "--ckpt_path", "last", "--trainer.max_epochs", "2"]
    cli_main([*resume, "--model.optimizer.init_args.lr", "0.00001"])
    assert "Resuming at learning rate 1e-05 (the checkpoint's run was configured with 0.003)" in capsys.readouterr().err
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == 1e-05
    segment = json.loads((run / "run.json").read_text())["segments"][-1]  # the value recorded is the value used
    assert segment["config"]["model"]["optimizer"]["init_args"]["lr"] == 1e-05 and "model.optimizer" in segment["changes"]
    for flags, message in [
        (["--model.encoder.init_args.hidden_size", "16"], r"model.encoder.init_args.hidden_size=32, this one 16"),
        (["--model.encoder.init_args.cell", "gru"], r"model.encoder.init_args.cell=lstm, this one gru"),
        (["--data.vocab_size", "200"], r"model.encoder.init_args.vocab_size=300, this one 200 \(data.vocab_size sets it\)"),
        (["--model.lr_decay", "2.6"], r"its run used model.lr_decay=1.0, this one 2.6"),
        (["--model.dropout", "0.5"], r"its run used model.dropout=0.0, this one 0.5"),
    ]:
        with pytest.raises(SystemExit) as exit:
            cli_main([*resume, "--trainer.max_epochs", "3", *flags])
        assert re.search(message, str(exit.value.code)), exit.value.code
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2  # nothing trained


def test_a_resume_that_would_change_what_its_figures_mean_is_refused_and_changes_nothing(tmp_path, cache_dir, monkeypatch):
    from conftest import SMALL, write_reviews
    from imdb_lightning.data.synthetic import synthetic_reviews

    monkeypatch.chdir(tmp_path)
    texts, labels = synthetic_reviews(300, seed=0)
    films = [f"tt{i // 3:07d}" for i in range(300)]
    train = write_reviews(tmp_path / "train.parquet", texts, labels, films)
    same = write_reviews(tmp_path / "same.parquet", texts, labels, films)  # the same reviews, elsewhere
    other = write_reviews(tmp_path / "other.parquet", texts[::-1], labels[::-1], films)  # other reviews for each film
    base = ["fit", "--config", str(QUICKSTART), *SMALL, "--data.source", "files", "--data.train_files", train,
            "--data.cache_dir", cache_dir, "--trainer.max_epochs", "2"]
    cli_main(base)
    run = tmp_path / "lightning_logs" / "quickstart" / "version_0"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for flags, message in [
        (["--data.split_seed", "3"], r"its run used data\.split_seed=0, this one 3; a resumed fit goes on with its checkpoint"),
        (["--data.val_split", "random"], r"data\.val_split=auto, this one random"),
        (["--data.val_fraction", "0.2"], r"data\.val_fraction=0\.1, this one 0\.2"),
        (["--data.max_length", "32"], r"data\.max_length=60, this one 32"),
        (["--data.truncation", "tail"], r"data\.truncation=head, this one tail"),
        (["--data.lowercase", "false"], r"data\.lowercase=True, this one False"),
        (["--data.train_files", other], r"its run trained on other training reviews than data\.train_files holds now"),
        # Lightning would refuse it after rewriting config.yaml and marking the finished run crashed
        (["--trainer.max_epochs", "1"], r"^imdb-lightning: error: --trainer\.max_epochs 1: \S+last\.ckpt has trained 2 epochs "
                                        r"already; to train on, resume with --trainer\.max_epochs 3 or more"),
        (["--trainer.max_epochs", "2"], r"has trained its 2 epochs: nothing is left to train"),
    ]:
        with pytest.raises(SystemExit) as exit:
            cli_main([*base, "--ckpt_path", "last", "--trainer.max_epochs", "3", *flags])
        assert re.search(message, str(exit.value.code)) and "\n" not in str(exit.value.code), exit.value.code
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before, flags  # nothing written
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    # where the files are is not what they are: the same reviews at another path, a larger batch and more
    # epochs are applied, said, and recorded in the run's second segment
    cli_main([*base, "--ckpt_path", "last", "--trainer.max_epochs", "3", "--data.train_files", same,
              "--data.batch_size", "16"])
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["epochs"] == 3
    assert set(record["segments"][1]["changes"]) == {"data.train_files", "data.batch_size", "trainer.max_epochs"}
    assert (run / "config.yaml").read_bytes() == before["config.yaml"]  # the configuration it started with
