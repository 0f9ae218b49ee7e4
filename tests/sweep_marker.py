"""A callback that sweep workers under test load (`--set trainer.callbacks+=sweep_marker.Marker`, this folder on
PYTHONPATH): it appends what each worker does to a shared file, one JSON line per event written whole (O_APPEND),
so a test counts trainings independently of the code under test. Environment:

  MARKER_FILE   the file (required)
  MARKER_PAUSE  seconds to wait after each training and test batch, and at setup, so a signal sent on an event
                lands inside that phase
  MARKER_FAIL   "CELL:N": the fit of CELL (e.g. "nbow seed 1") raises on its first N starts
  MARKER_SIGINT "CELL:STEP": the process sends itself SIGINT (Ctrl-C) after CELL's training step STEP

Run as a script (`python sweep_marker.py ARGS`), it is `imdb-lightning ARGS` started once the file GO_FILE exists
(imports done first, so workers are released together); CLAIM_DELAY seconds slow the moment a worker takes a
cell (Optuna's suggest_categorical), forcing the interleaving a claim that is not atomic loses.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import lightning as L


def events(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Marker(L.Callback):
    def __init__(self):
        self.file = os.environ["MARKER_FILE"]
        self.pause = float(os.environ.get("MARKER_PAUSE", "0"))

    @staticmethod
    def cell(trainer) -> str:
        return f"{trainer.logger.name} seed {os.environ.get('PL_GLOBAL_SEED')}"

    def write(self, trainer, event: str, **fields) -> None:
        line = json.dumps({"event": event, "cell": self.cell(trainer), "run": str(trainer.log_dir), "pid": os.getpid(),
                           "t": time.time(), **fields})
        fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def setup(self, trainer, module, stage: str) -> None:
        self.write(trainer, f"setup_{getattr(stage, 'value', stage)}")
        time.sleep(self.pause)

    def on_fit_start(self, trainer, module) -> None:
        had_last = (Path(trainer.log_dir) / "checkpoints" / "last.ckpt").is_file()
        self.write(trainer, "fit_start", resumed_from=trainer.ckpt_path and str(trainer.ckpt_path), had_last=had_last,
                   step=trainer.global_step)
        cell, _, times = os.environ.get("MARKER_FAIL", "").rpartition(":")
        if cell == self.cell(trainer):
            starts = [e for e in events(self.file) if e["event"] == "fit_start" and e["cell"] == cell]
            if len(starts) <= int(times):
                raise RuntimeError(f"planted failure of {cell} (start {len(starts)})")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.write(trainer, "step", step=trainer.global_step)
        time.sleep(self.pause)
        cell, _, step = os.environ.get("MARKER_SIGINT", "").rpartition(":")
        if cell == self.cell(trainer) and trainer.global_step == int(step):
            os.kill(os.getpid(), signal.SIGINT)

    def on_train_end(self, trainer, module) -> None:
        self.write(trainer, "fit_end", step=trainer.global_step)

    def on_test_start(self, trainer, module) -> None:
        self.write(trainer, "test_start")

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        time.sleep(self.pause)

    def on_test_end(self, trainer, module) -> None:
        self.write(trainer, "test_end")


if __name__ == "__main__":
    import optuna

    from imdb_lightning.cli import cli_main

    go = Path(os.environ["GO_FILE"])
    while not go.exists():
        time.sleep(0.005)
    delay = float(os.environ.get("CLAIM_DELAY", "0"))
    if delay:
        suggest = optuna.trial.Trial.suggest_categorical

        def slow(self, name, choices):
            time.sleep(delay)
            return suggest(self, name, choices)

        optuna.trial.Trial.suggest_categorical = slow
    cli_main(sys.argv[1:])
