"""Lightning DDP on CPU (gloo): two devices on one machine, and two "nodes" over loopback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import QUICKSTART, free_port

pytestmark = pytest.mark.ddp


def args(tmp_path, batch_size, *extra):
    return [
        sys.executable, "-m", "imdb_lightning", "fit", "--config", str(QUICKSTART),
        "--data.cache_dir", str(tmp_path / "cache"), "--data.synthetic_size", "2000", "--data.batch_size", str(batch_size),
        "--trainer.max_epochs", "4", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu", *extra,
    ]


def run(cmd, cwd, env=None):
    done = subprocess.run(cmd, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def best_val_acc(run_dir: Path) -> float:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    state = next(v for k, v in ckpt["callbacks"].items() if "val/acc" in k)
    return float(state["best_model_score"])


def test_two_devices_one_machine(tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    run(args(tmp_path, 64, "--trainer.devices", "1"), single)

    ddp = tmp_path / "ddp"
    ddp.mkdir()
    done = run(args(tmp_path, 32, "--trainer.devices", "2", "--trainer.strategy", "ddp"), ddp)
    assert "distributed_backend=gloo" in done.stderr + done.stdout
    runs = list((ddp / "lightning_logs").glob("*/version_*"))
    assert len(runs) == 1  # rank 0 alone writes logs and checkpoints
    ckpt = torch.load(runs[0] / "checkpoints" / "last.ckpt", weights_only=True)
    # 1800 training reviews: 900 per process, 29 batches of 32 per epoch, the same on both ranks
    # (last.ckpt is the state after the fit, whose epoch counter has moved past the last epoch run)
    assert ckpt["global_step"] == 29 * ckpt["epoch"]
    assert abs(best_val_acc(runs[0]) - best_val_acc(next((single / "lightning_logs").glob("*/version_0")))) <= 0.03


def test_two_nodes_over_loopback(tmp_path):
    port = str(free_port())
    procs = []
    for node in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "WORLD_SIZE": "2", "NODE_RANK": str(node), "LOCAL_RANK": "0"}
        cmd = args(tmp_path, 32, "--trainer.devices", "1", "--trainer.num_nodes", "2", "--trainer.strategy", "ddp")
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    two_nodes = best_val_acc(next((tmp_path / "lightning_logs").glob("*/version_0")))

    single = tmp_path / "single"
    single.mkdir()
    run(args(tmp_path, 64, "--trainer.devices", "1"), single)
    # same global batch (2 x 32 vs 64): the same accuracy within 3 points on 200 validation reviews
    assert abs(two_nodes - best_val_acc(next((single / "lightning_logs").glob("*/version_0")))) <= 0.03
