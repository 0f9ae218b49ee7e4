"""Files saved by an earlier version still load and predict what they predicted then.

tests/golden/ holds tiny run folders written by the commands users run (one classifier per encoder
family, a language model, a linear run and a stack) and expected.json, what the code that wrote them
predicted. A change that renames a state-dict or hyperparameter key, or moves a tokenizer, breaks
these tests rather than users' saved runs. Regenerate with tests/golden/make_golden.py only when a
format change is intended (and then say how old files are read).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import imdb_lightning
from conftest import EXPERIMENTS, SMALL
from imdb_lightning.checkpoints import data_state, read_checkpoint
from imdb_lightning.cli import cli_main
from imdb_lightning.models.encoders import build_encoder
from imdb_lightning.models.language_model import LanguageModel
from imdb_lightning.runs import last_checkpoint, run_folders

GOLDEN = Path(__file__).parent / "golden"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text()) if (GOLDEN / "expected.json").is_file() else {}
CLASSIFIERS = ["lstm", "gru", "bilstm", "bigru", "rnn", "nbow"]
LANGUAGE_MODEL = "pretrain_cpu_lstm"


def only_checkpoint(name: str) -> Path:
    [ckpt] = (GOLDEN / name / "version_0" / "checkpoints").glob("*.ckpt")
    return ckpt


def language_model_loss(path, text: str) -> float:
    """Mean next-word cross-entropy of a language model checkpoint on one text, in eval mode."""
    ckpt = read_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    model = LanguageModel(build_encoder(hp["encoder"]), adaptive_cutoffs=hp["adaptive_cutoffs"])
    model.load_state_dict(ckpt["state_dict"])  # strict: every weight (and epoch figure) under the name it had
    from tokenizers import Tokenizer

    ids = torch.tensor(Tokenizer.from_str(data_state(ckpt)["tokenizer"]).encode(text).ids)[None]  # (1, tokens)
    model.eval()
    with torch.no_grad():
        features, _ = model.hidden(ids[:, :-1])  # (tokens - 1, 1, embed)
        return float(model.loss(features.reshape(-1, features.shape[-1]), ids[0, 1:]))


def test_every_golden_file_is_there_and_small():
    assert set(EXPECTED["probabilities"]) == {*CLASSIFIERS, "linear_tfidf", "nbsvm+lstm+gru"}
    assert sum(p.stat().st_size for p in GOLDEN.rglob("*") if p.is_file()) < 1_000_000


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_a_saved_classifier_predicts_what_it_predicted(name):
    ckpt = only_checkpoint(name)
    probabilities = imdb_lightning.load(ckpt).predict(EXPECTED["texts"])
    np.testing.assert_allclose(probabilities, EXPECTED["probabilities"][name], rtol=0, atol=1e-6)


def test_the_tail_truncated_golden_classifier_still_reads_the_end_of_a_long_review():
    # bigru was trained with --data.truncation tail: a loader that dropped the setting would read the head
    predictor = imdb_lightning.load(only_checkpoint("bigru"))
    assert predictor.truncation == "tail" and predictor.max_length == 40
    assert imdb_lightning.load(only_checkpoint("lstm")).truncation == "head"


@pytest.mark.parametrize("name", ["linear_tfidf", "nbsvm+lstm+gru"])
def test_a_saved_linear_run_and_stack_predict_what_they_predicted(name, monkeypatch):
    folder = GOLDEN / name / "version_0"
    monkeypatch.chdir(folder)  # the stack names its checkpoints relative to its own folder
    probabilities = imdb_lightning.load(folder).predict(EXPECTED["texts"])
    np.testing.assert_allclose(probabilities, EXPECTED["probabilities"][name], rtol=0, atol=1e-6)


def test_the_saved_stack_weighs_the_saved_classifiers(monkeypatch):
    # its probability is the logistic of its weights applied to each member's logit: the members are the golden runs
    folder = GOLDEN / "nbsvm+lstm+gru" / "version_0"
    monkeypatch.chdir(folder)
    record = json.loads((folder / "run.json").read_text())
    stack = imdb_lightning.load(folder)
    members = [imdb_lightning.load(c) for c in record["checkpoints"]]
    assert [Path(c).parts[-4] for c in record["checkpoints"]] == ["lstm", "gru"]
    logits = np.stack([stack.model.linear.logits(EXPECTED["texts"]), *(m.logits(EXPECTED["texts"]) for m in members)], 1)
    expected = 1 / (1 + np.exp(-(logits @ np.array(record["weights"][:-1]) + record["weights"][-1])))
    np.testing.assert_allclose(expected, EXPECTED["probabilities"]["nbsvm+lstm+gru"], rtol=0, atol=1e-6)


def test_a_saved_language_model_scores_its_text_as_it_did():
    loss = language_model_loss(only_checkpoint(LANGUAGE_MODEL), EXPECTED["language_model_text"])
    assert loss == pytest.approx(EXPECTED["language_model_loss"], abs=1e-6)


def test_a_saved_language_model_fine_tunes(tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lm = only_checkpoint(LANGUAGE_MODEL)
    sizes = ["--model.encoder.init_args.embed_dim", "8", "--model.encoder.init_args.hidden_size", "8"]
    args = ["--config", str(EXPERIMENTS / "pretrain" / "finetune_lstm.yaml"), *SMALL, "--data.cache_dir", cache_dir,
            *sizes, "--model.pretrained", str(lm)]
    from imdb_lightning.training import make_cli

    cli = make_cli(args, run=False)  # the classifier as fit builds it, before any step
    weights = read_checkpoint(lm)["state_dict"]
    for name, tensor in cli.model.encoder.state_dict().items():
        assert torch.equal(tensor, weights[f"encoder.{name}"]), name
    cli_main(["fit", *args])
    fitted = read_checkpoint(last_checkpoint(run_folders(tmp_path / "lightning_logs" / "finetune_lstm")[-1]))
    assert data_state(fitted)["tokenizer"] == data_state(read_checkpoint(lm))["tokenizer"]
