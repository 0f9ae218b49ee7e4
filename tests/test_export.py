"""Batch predictions to files, and ONNX / TorchScript exports that match the PyTorch model."""

import json
import subprocess
import sys

import lightning as L
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import imdb_lightning
from conftest import RECURRENT_PRESETS as ENCODERS
from conftest import quick_trainer
from imdb_lightning.cli import cli_main
from imdb_lightning.models.classifier import SentimentClassifier
from imdb_lightning.models.encoders import RecurrentEncoder
from imdb_lightning.serve.export import export
from imdb_lightning.serve.runtime import ExportedClassifier

REVIEWS = [
    "the plot was not good .", "A wonderful film!<br /><br />Truly.", "", "x " * 700, "🎬 très bien, not bad",
    "i watched it on a friday with my sister . the music was superb .", "dull",
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, synthetic):
    root = tmp_path_factory.mktemp("export")
    dm = synthetic(synthetic_size=300, vocab_size=300, max_length=300)
    paths = {}
    for name, kwargs in ENCODERS.items():
        L.seed_everything(0, verbose=False)
        if name == "bigru":  # the token-id knobs too: bigram and word bags export, word and weight dropout stay out of inference
            kwargs = {**kwargs, "bigram_buckets": 50, "word_bag": True, "word_dropout": 0.2, "weight_drop": 0.3}
        model = SentimentClassifier(RecurrentEncoder(vocab_size=300, embed_dim=12, hidden_size=10, num_layers=2, **kwargs))
        paths[name] = trained_checkpoint(model, dm, root / f"{name}.ckpt", steps=2)
    return paths


def trained_checkpoint(model, dm, path, steps: int):
    """A few training steps of `model` on `dm`, saved to `path`."""
    trainer = quick_trainer(path.parent, max_epochs=None, max_steps=steps, limit_val_batches=1, deterministic=False)
    trainer.fit(model, dm)
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", ENCODERS)
def test_export_matches_pytorch(checkpoints, tmp_path, name, fmt):
    out = export(checkpoints[name], fmt, tmp_path / "exported")
    assert {p.name for p in out.iterdir()} >= {"tokenizer.json", "meta.json", "classify.py"}
    expected = imdb_lightning.load(checkpoints[name]).predict(REVIEWS)
    got = ExportedClassifier(out).predict(REVIEWS)  # mixed lengths, other batch and time sizes than traced
    assert got == pytest.approx(expected, abs=1e-5)


def test_exported_loader_runs_without_lightning(checkpoints, tmp_path):
    out = export(checkpoints["bilstm"], "onnx", tmp_path / "onnx")
    # Block Lightning's import: the loader must not need it.
    code = (
        "import sys, runpy; sys.modules['lightning'] = sys.modules['pytorch_lightning'] = None; "
        "sys.argv = ['classify.py', 'a great film', 'not good']; "
        f"runpy.run_path({str(out / 'classify.py')!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in {"positive", "negative"} for line in lines)


def test_export_command(checkpoints, tmp_path, capsys):
    cli_main(["export", "--ckpt_path", str(checkpoints["gru"]), "--format", "torchscript", "--out", str(tmp_path / "ts")])
    assert json.loads((tmp_path / "ts" / "meta.json").read_text())["format"] == "torchscript"
    out = tmp_path / "ts"
    assert capsys.readouterr().out == f'exported to {out}; try: python {out / "classify.py"} "a wonderful film"\n'
    expected = imdb_lightning.load(checkpoints["gru"]).predict(REVIEWS)
    assert ExportedClassifier(out).predict(REVIEWS) == pytest.approx(expected, abs=1e-5)  # the folder it names works


def write_inputs(tmp_path):
    texts = REVIEWS * 3
    (tmp_path / "in.txt").write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n")
    pq.write_table(pa.table({"text": texts, "other": list(range(len(texts)))}), tmp_path / "in.parquet")
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    import csv

    with open(tmp_path / "in.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows(enumerate(texts))
    return texts


def read_output(path):
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    import csv

    with open(path, newline="") as f:
        return [{**row, "id": int(row["id"]), "probability": float(row["probability"])} for row in csv.DictReader(f)]


@pytest.mark.parametrize("source", ["txt", "csv", "jsonl", "parquet"])
@pytest.mark.parametrize("target", ["csv", "jsonl", "parquet"])
def test_predict_file_to_file(checkpoints, tmp_path, source, target, monkeypatch):
    texts = write_inputs(tmp_path)
    monkeypatch.setattr("imdb_lightning.serve.predict.CHUNK", 4)  # several chunks, as with a large file
    out = tmp_path / f"out.{target}"
    cli_main(["predict", "--ckpt_path", str(checkpoints["lstm"]), "--file", str(tmp_path / f"in.{source}"),
              "--output", str(out), "--with_text"])
    rows = read_output(out)
    expected = imdb_lightning.load(checkpoints["lstm"]).predict(texts)
    assert [r["id"] for r in rows] == list(range(len(texts)))
    assert [r["probability"] for r in rows] == pytest.approx(expected, abs=1e-6)
    assert all(r["label"] == ("positive" if r["probability"] >= 0.5 else "negative") for r in rows)
    if source != "txt":  # txt cannot hold the one review with a newline... none here, but keep it simple
        assert [r["text"] for r in rows] == texts


def test_predict_file_errors(checkpoints, tmp_path):
    (tmp_path / "bad.csv").write_text("review\nhello\n")
    with pytest.raises(SystemExit, match="no 'text' column; columns found: review"):
        cli_main(["predict", "--ckpt_path", str(checkpoints["lstm"]), "--file", str(tmp_path / "bad.csv")])
    with pytest.raises(SystemExit, match="cannot write '.xlsx'"):
        cli_main(["predict", "--ckpt_path", str(checkpoints["lstm"]), "a", "--output", str(tmp_path / "o.xlsx")])


@pytest.fixture(scope="module")
def other_checkpoints(tmp_path_factory, synthetic):
    """The registry's non-recurrent encoder and the from-scratch SimpleRNN, trained a few steps."""
    from imdb_lightning.models.encoders import NBoWEncoder, ScratchRNNEncoder

    root = tmp_path_factory.mktemp("export_other")
    dm = synthetic(synthetic_size=300, vocab_size=300, max_length=80)
    paths = {}
    for name, encoder in {"nbow": NBoWEncoder(vocab_size=300, embed_dim=12, bigram_buckets=40),
                          "scratch_rnn": ScratchRNNEncoder(vocab_size=300, embed_dim=12, hidden_size=10)}.items():
        L.seed_everything(0, verbose=False)
        paths[name] = trained_checkpoint(SentimentClassifier(encoder), dm, root / f"{name}.ckpt", steps=3)
    return paths


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_nbow_export_matches_pytorch(other_checkpoints, tmp_path, fmt):
    out = export(other_checkpoints["nbow"], fmt, tmp_path / "exported")
    expected = imdb_lightning.load(other_checkpoints["nbow"]).predict(REVIEWS)
    assert ExportedClassifier(out).predict(REVIEWS) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_encoder_tracing_cannot_capture_is_refused_and_nothing_written(other_checkpoints, tmp_path, fmt):
    # ScratchRNNEncoder loops over time in Python: a trace would fix the loop at the example's length.
    with pytest.raises(SystemExit) as exit:
        cli_main(["export", "--ckpt_path", str(other_checkpoints["scratch_rnn"]), "--format", fmt, "--out", str(tmp_path / "x")])
    err = str(exit.value.code)
    assert "the exported ScratchRNNEncoder does not reproduce the checkpoint" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_export_of_a_linear_run_folder_says_how_to_apply_it(tmp_path):
    folder = tmp_path / "nbsvm" / "version_0"
    folder.mkdir(parents=True)
    from imdb_lightning.models.linear import LinearReference

    LinearReference("nbsvm").fit(["good film", "bad film", "great", "awful"], [1, 0, 1, 0]).save(folder / "linear.npz")
    with pytest.raises(SystemExit) as exit:
        cli_main(["export", "--ckpt_path", str(folder), "--out", str(tmp_path / "x")])
    err = str(exit.value.code)
    assert "a run folder of `imdb-lightning linear`" in err and "imdb-lightning predict --ckpt_path" in err
    assert not (tmp_path / "x").exists()


HEAD = "the plot was wonderful and the music was brilliant and the acting was superb .".split()  # 15 tokens
TAIL = "the plot was awful and the music was dull and the acting was terrible .".split()
LONG = " ".join(HEAD + ["i watched it on a friday with my sister ."] * 5 + TAIL)  # its two ends read differently


@pytest.fixture(scope="module")
def tail_checkpoint(tmp_path_factory, synthetic):
    """A GRU trained a few steps on reviews cut to their last 15 tokens (truncation tail)."""
    root = tmp_path_factory.mktemp("tail")
    dm = synthetic(synthetic_size=300, vocab_size=300, max_length=15, truncation="tail")
    L.seed_everything(0, verbose=False)
    model = SentimentClassifier(RecurrentEncoder(vocab_size=300, embed_dim=12, hidden_size=10, cell="gru"))
    return trained_checkpoint(model, dm, root / "tail.ckpt", steps=5)


def test_head_and_tail_truncation_keep_the_first_and_the_last_tokens(tail_checkpoint, tmp_path):
    import torch

    from imdb_lightning.serve.runtime import padded_batches

    tail = imdb_lightning.load(tail_checkpoint)
    assert (tail.truncation, tail.max_length) == ("tail", 15)
    ids = tail.tokenizer.encode(LONG).ids
    assert len(ids) > 30 and ids[:15] != ids[-15:]
    for truncation, kept in (("head", ids[:15]), ("tail", ids[-15:])):
        [(_, batch, lengths)] = padded_batches(tail.tokenizer, [LONG], 15, truncation)
        assert batch[0].tolist() == kept and lengths.tolist() == [15]

    # the long review is read as its last 15 words alone; a copy of the checkpoint set to head, as its first 15
    from imdb_lightning.checkpoints import data_state

    ckpt = torch.load(tail_checkpoint, weights_only=True)
    data_state(ckpt)["truncation"] = "head"
    torch.save(ckpt, tmp_path / "head.ckpt")
    head = imdb_lightning.load(tmp_path / "head.ckpt")
    assert tail.predict([LONG]) == pytest.approx(tail.predict([" ".join(TAIL)]), abs=1e-7)
    assert head.predict([LONG]) == pytest.approx(head.predict([" ".join(HEAD)]), abs=1e-7)
    assert abs(tail.predict([LONG])[0] - head.predict([LONG])[0]) > 1e-4  # the two ends are told apart


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_exported_model_truncates_as_its_checkpoint(tail_checkpoint, tmp_path, fmt):
    out = export(tail_checkpoint, fmt, tmp_path / "exported")
    assert json.loads((out / "meta.json").read_text())["truncation"] == "tail"
    reference = imdb_lightning.load(tail_checkpoint).predict([" ".join(TAIL), " ".join(HEAD)])  # nothing to cut
    assert ExportedClassifier(out).predict([LONG, " ".join(HEAD)]) == pytest.approx(reference, abs=1e-5)


def test_training_batches_truncate_a_long_review_at_the_same_end(tmp_path, cache_dir):
    from conftest import write_reviews
    from imdb_lightning.data.datamodule import IMDBDataModule
    from imdb_lightning.data.synthetic import synthetic_reviews

    train = write_reviews(tmp_path / "train.parquet", *synthetic_reviews(200, seed=0))
    test = write_reviews(tmp_path / "test.parquet", [LONG, " ".join(HEAD), " ".join(TAIL)], [1, 1, 0])
    for truncation, kept in (("head", slice(None, 15)), ("tail", slice(-15, None))):
        dm = IMDBDataModule(train_files=train, test_files=test, vocab_size=300, max_length=15, truncation=truncation,
                            cache_dir=cache_dir)
        ids = dm.dataset("test")[0][0]
        assert list(ids) == dm.get_tokenizer().encode(LONG).ids[kept]
