"""Regenerate the golden run folders in tests/golden/ and the predictions recorded beside them.

    python tests/golden/make_golden.py        (from the repository root; about a minute on two cores)

Only when the change to the checkpoint format is intended: the point of these files is that a change
which breaks users' saved checkpoints, language models, linear runs or stacks breaks
tests/test_golden.py first. Each is trained with tiny sizes on generated reviews through the
commands users run (`fit`, `pretrain`, `linear`, `linear --combine`); only the files the loaders read
are kept (config.yaml, run.json, one checkpoint or linear.npz), and expected.json records what today's
code predicts from them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EXPERIMENTS = ROOT / "experiments"
# Classifiers: one per encoder family, each through its experiment YAML (bigru with tail truncation).
CLASSIFIERS = {"lstm": [], "gru": [], "bilstm": [], "bigru": ["--data.truncation", "tail"], "rnn": [],
               "nbow": ["--model.encoder.init_args.bigram_buckets", "64"]}
SIZES = ["--data.vocab_size", "120", "--model.encoder.init_args.embed_dim", "8", "--trainer.enable_progress_bar", "false"]
TRAINING = ["--data.max_length", "40", "--data.batch_size", "32", "--trainer.max_epochs", "4",
            "--model.optimizer", '{"class_path": "torch.optim.Adam", "init_args": {"lr": 0.02}}']
HIDDEN = ["--model.encoder.init_args.hidden_size", "8"]
LANGUAGE_MODEL = "pretrain_cpu_lstm"
STACK = "nbsvm+lstm+gru"
LINEAR = "linear_tfidf"


def texts() -> list[str]:
    """The fixed reviews every golden model is asked about: short verdicts, generated reviews, an empty one,
    unknown words, and one longer than max_length whose ends read differently."""
    from imdb_lightning.data.synthetic import synthetic_reviews

    generated, _ = synthetic_reviews(4, seed=123)
    long = " ".join(["the film was wonderful and superb ."] * 15 + ["the film was dull and awful ."] * 15)
    return ["the plot was not good .", "the acting was not bad at all .", "the music was brilliant .", *generated,
            "", "zzyzx qwerty unheard-of words", long]


def language_model_text() -> str:
    from imdb_lightning.data.synthetic import synthetic_reviews

    return " ".join(synthetic_reviews(3, seed=321)[0])


def imdb_lightning(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "imdb_lightning", *args], cwd=cwd, env=env, check=True)


def keep(run: Path, target: Path, files: list[str]) -> None:
    """Copy a run folder's loader-read files to target (nothing else: no events, no second checkpoint)."""
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run / name, target / name)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from imdb_lightning.data.sources import write_reviews
    from imdb_lightning.data.synthetic import synthetic_reviews

    for old in HERE.iterdir():
        if old.is_dir():
            shutil.rmtree(old)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        reviews, labels = synthetic_reviews(800, seed=0)
        train = write_reviews(reviews, labels, work / "train.parquet", [f"tt{i // 3:07d}" for i in range(800)])
        test_texts, test_labels = synthetic_reviews(100, seed=1)
        test = write_reviews(test_texts, test_labels, work / "test.parquet")
        unlabelled = write_reviews(synthetic_reviews(200, seed=5)[0], [0] * 200, work / "unsup.parquet")
        data = ["--data.train_files", train, "--data.cache_dir", str(work / "cache")]

        for name, extra in CLASSIFIERS.items():
            hidden = [] if name == "nbow" else HIDDEN
            imdb_lightning("fit", "--config", str(EXPERIMENTS / f"{name}.yaml"), *data, *SIZES, *TRAINING, *hidden, *extra,
                           cwd=work)
            run = work / "lightning_logs" / name / "version_0"
            [best] = (run / "checkpoints").glob("best*.ckpt")
            keep(run, HERE / name / "version_0", ["config.yaml", "run.json", f"checkpoints/{best.name}"])

        imdb_lightning("pretrain", "--config", str(EXPERIMENTS / "pretrain" / "cpu_lstm.yaml"), "--data.unlabelled_files",
                       unlabelled, "--data.use_train_texts", "false", "--data.cache_dir", str(work / "cache"),
                       *SIZES, *HIDDEN, "--model.adaptive_cutoffs", "[40, 80]", "--data.batch_size", "4",
                       "--data.bptt", "10", "--trainer.precision", "32-true", "--trainer.max_epochs", "1",
                       "--trainer.limit_train_batches", "20", "--trainer.limit_val_batches", "2", cwd=work)
        run = work / "lightning_logs" / LANGUAGE_MODEL / "version_0"
        [best] = (run / "checkpoints").glob("best*.ckpt")
        keep(run, HERE / LANGUAGE_MODEL / "version_0", ["config.yaml", "run.json", f"checkpoints/{best.name}"])

        imdb_lightning("linear", "--config", str(EXPERIMENTS / "lstm.yaml"), *data, "--data.test_files", test,
                       "--models", "tfidf", "--logdir", str(work / "linear"), cwd=work)
        keep(work / "linear" / LINEAR / "version_0", HERE / LINEAR / "version_0", ["config.yaml", "run.json", "linear.npz"])

        # The stack of the kept lstm and gru runs (their only checkpoint each), from the repository's copies.
        imdb_lightning("linear", "--combine", str(HERE / "lstm" / "version_0"), str(HERE / "gru" / "version_0"),
                       "--data.test_files", test, "--logdir", str(work / "stack"), "--device", "cpu", cwd=work)
        stack = HERE / STACK / "version_0"
        keep(work / "stack" / STACK / "version_0", stack, ["config.yaml", "run.json", "linear.npz"])
        # A stack's run.json names its checkpoints by path; the loader reads them as given, so the golden test
        # reads this one from inside its folder: paths relative to it work wherever the repository is cloned.
        record = json.loads((stack / "run.json").read_text())
        record["checkpoints"] = [os.path.relpath(c, stack) for c in record["checkpoints"]]
        (stack / "run.json").write_text(json.dumps(record, indent=2))

    expected = {"texts": texts(), "language_model_text": language_model_text(), "probabilities": {}}
    import imdb_lightning as package

    for name in [*CLASSIFIERS, LINEAR, STACK]:
        folder = HERE / name / "version_0"
        path = folder if (folder / "linear.npz").is_file() else next((folder / "checkpoints").glob("*.ckpt"))
        os.chdir(folder)  # (the stack's checkpoint paths are relative to its folder)
        expected["probabilities"][name] = [float(p) for p in np.asarray(package.load(path).predict(expected["texts"]))]
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT / "tests"))
    from test_golden import language_model_loss

    lm = next((HERE / LANGUAGE_MODEL / "version_0" / "checkpoints").glob("*.ckpt"))
    expected["language_model_loss"] = language_model_loss(lm, expected["language_model_text"])
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    size = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
    print(f"golden files: {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
