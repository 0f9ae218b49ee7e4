"""Sweeps, the leaderboard and plots, and TensorBoard serving the runs' scalars."""

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from imdb_lightning.cli import cli_main
from imdb_lightning.compare import Run, compare, group, leaderboard, mean_std

QUICKSTART = Path(__file__).parents[1] / "experiments" / "quickstart.yaml"
SMALL = ["data.synthetic_size=400", "data.max_length=60", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
         "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    args = ["sweep", "--encoders", "rnn,gru", "--seeds", "0,1", "--config", str(QUICKSTART),
            "--logdir", str(root / "logs"), *[a for s in SMALL for a in ("--set", s)],
            "--set", f"data.cache_dir={root / 'cache'}"]
    cli_main(args)
    return root, args


def test_sweep_runs_tests_and_records_every_run(swept):
    root, _ = swept
    records = [json.loads(p.read_text()) for p in sorted((root / "logs").glob("*/version_*/run.json"))]
    assert sorted((r["encoder"], r["seed"]) for r in records) == [("gru", 0), ("gru", 1), ("rnn", 0), ("rnn", 1)]
    for record in records:
        assert record["status"] == "finished" and record["epochs"] == 2
        assert 0 <= record["best_val_acc"] <= 1 and record["train_samples_per_s"] > 0
        assert set(record["test"]) >= {"test/acc", "test/f1", "test/auroc", "test/loss"}


def test_rerun_skips_finished_and_resumes_unfinished(swept, capsys):
    root, args = swept
    record_file = next((root / "logs" / "gru").glob("version_*/run.json"))
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({**record, "status": "running"}))  # as if killed
    runs_before = sorted((root / "logs").glob("*/version_*"))
    cli_main(args)
    err = capsys.readouterr().err
    assert err.count("skipped") == 3 and "resuming" in err
    assert sorted((root / "logs").glob("*/version_*")) == runs_before  # resumed in its own folder
    assert json.loads(record_file.read_text())["status"] == "finished"


def test_compare_writes_leaderboard_and_plots(swept, tmp_path):
    root, _ = swept
    crashed = root / "logs" / "gru" / "version_9"
    crashed.mkdir()
    (crashed / "config.yaml").write_text((next((root / "logs" / "gru").glob("version_0")) / "config.yaml").read_text())
    (crashed / "run.json").write_text(json.dumps({"status": "crashed", "error": "RuntimeError: boom"}))
    result = compare(root / "logs", tmp_path)
    assert result["runs"] == 5 and result["finished"] == 4
    table = (tmp_path / "leaderboard.md").read_text()
    assert "| rnn |" in table and "| gru |" in table and "crashed (RuntimeError: boom)" in table
    rows = (tmp_path / "leaderboard.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("encoder,seeds,parameters,best val acc mean,best val acc std")
    assert all(",2," in row for row in rows[1:])  # two seeds per encoder
    for png in ("val_acc.png", "val_loss.png", "acc_vs_time.png"):
        assert (tmp_path / png).stat().st_size > 5000


def fake(name, seed, acc, **settings):
    return Run(Path(f"{name}/{seed}"), name, {"model.dropout": 0.0, **settings},
               {"status": "finished", "best_val_acc": acc, "epochs": 3, "wall_s": 10.0, "parameters": 5})


def test_grouping_mean_std_and_order():
    runs = [fake("lstm", 0, 0.80), fake("lstm", 1, 0.84), fake("gru", 0, 0.90),
            fake("lstm", 0, 0.70, **{"model.dropout": 0.5})]
    varying, groups = group(runs)
    assert varying == ["model.dropout"] and len(groups) == 3
    header, rows = leaderboard(runs)
    assert [r[0] for r in rows] == ["gru", "lstm", "lstm"]  # best first
    lstm = rows[1]
    assert lstm[header.index("seeds")] == 2
    assert lstm[header.index("best val acc")] == pytest.approx((0.82, mean_std([0.80, 0.84])[1]))
    assert mean_std([0.80, 0.84])[1] == pytest.approx(0.028284, abs=1e-6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_tensorboard_serves_the_runs(swept):
    root, _ = swept
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(root / "logs"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/data"
        deadline = time.monotonic() + 60
        while True:
            try:
                tags = get(f"{base}/plugin/scalars/tags")
                if len(tags) >= 4:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "TensorBoard did not serve the runs"
            time.sleep(0.5)
        for run, run_tags in tags.items():
            assert {"val/acc", "val/loss", "train/loss_epoch", "hp/val_acc", "hp/test_acc", "test/acc"} <= set(run_tags), run
            assert any(t.startswith("lr-") for t in run_tags)
        run = sorted(tags)[0]
        query = urllib.parse.urlencode({"run": run, "tag": "val/acc"})
        points = get(f"{base}/plugin/scalars/scalars?{query}")
        assert len(points) == 2 and all(0 <= value <= 1 for _, _, value in points)  # (wall time, step, value) per epoch
        images = get(f"{base}/plugin/images/tags")
        assert {"test/confusion_matrix", "test/roc"} <= set(images[run])
    finally:
        server.terminate()
        server.wait(10)


def test_sweep_runs_the_bag_of_words_reference_from_a_per_encoder_config(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "nbow.yaml").write_text(QUICKSTART.read_text())
    template = str(tmp_path / "cfg" / "{encoder}.yaml")
    args = ["sweep", "--encoders", "nbow", "--seeds", "0", "--config", template, "--logdir", str(tmp_path / "logs"),
            *[a for s in SMALL for a in ("--set", s)], "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    cli_main(args)
    run = next((tmp_path / "logs" / "nbow").glob("version_*"))
    assert "class_path: imdb_lightning.encoders.NBoWEncoder" in (run / "config.yaml").read_text()
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
