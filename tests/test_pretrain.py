"""Language-model pretraining and fine-tuning, on generated text."""

import pytest
import torch

from conftest import EXPERIMENTS, quick_trainer, write_reviews
from imdb_lightning.cli import cli_main
from imdb_lightning.data.corpus import CorpusDataModule
from imdb_lightning.data.datamodule import IMDBDataModule
from imdb_lightning.data.synthetic import synthetic_reviews
from imdb_lightning.errors import UserError
from imdb_lightning.models.checkpoints import checkpoint_kind, data_state, read_checkpoint
from imdb_lightning.models.classifier import FineTuningCollapsed, SentimentClassifier
from imdb_lightning.models.encoders import RecurrentEncoder
from imdb_lightning.models.language_model import LanguageModel
from imdb_lightning.runs import last_checkpoint, run_folders

SIZES = ["--data.vocab_size", "300", "--model.encoder.init_args.embed_dim", "16",
         "--model.encoder.init_args.hidden_size", "16", "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    unlabelled, _ = synthetic_reviews(400, seed=5)
    reviews, labels = synthetic_reviews(300, seed=0)
    films = [f"tt{i // 3:07d}" for i in range(300)]
    return {"unlabelled": write_reviews(root / "unsup.parquet", unlabelled, [0] * 400),
            "train": write_reviews(root / "train.parquet", reviews, labels, films)}


def test_the_corpus_holds_the_training_split_and_never_validation(texts, cache_dir):
    corpus = CorpusDataModule(unlabelled_files=[texts["unlabelled"]], train_files=[texts["train"]], cache_dir=cache_dir)
    held = set(IMDBDataModule(train_files=[texts["train"]], cache_dir=cache_dir).reviews("val").texts)
    trained = set(IMDBDataModule(train_files=[texts["train"]], cache_dir=cache_dir).reviews("train").texts)
    all_texts = set(corpus.texts())
    assert trained <= all_texts and not (held & all_texts)
    batch = next(iter(corpus.train_dataloader()))
    assert batch["input_ids"].shape == (32, 70) and torch.equal(batch["input_ids"][:, 1:], batch["targets"][:, :-1])


def test_pretraining_lowers_perplexity(texts, tmp_path, cache_dir):
    torch.manual_seed(0)
    dm = CorpusDataModule(unlabelled_files=[texts["unlabelled"]], vocab_size=300, batch_size=8, bptt=30, cache_dir=cache_dir)
    model = LanguageModel(RecurrentEncoder(vocab_size=300, cell="lstm", embed_dim=16, hidden_size=32),
                          optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    before = quick_trainer(tmp_path).validate(model, dm, verbose=False)[0]["val/loss"]
    quick_trainer(tmp_path, max_epochs=3).fit(model, dm)
    after = quick_trainer(tmp_path).validate(model, dm, verbose=False)[0]["val/loss"]
    assert torch.exp(torch.tensor(after)) < 0.5 * torch.exp(torch.tensor(before))  # perplexity at least halved


def test_pretrain_then_fine_tune_through_the_command_line(texts, tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = ["--data.train_files", texts["train"], "--data.cache_dir", cache_dir]
    cli_main(["pretrain", "--config", str(EXPERIMENTS / "pretrain" / "cpu_lstm.yaml"), "--data.unlabelled_files",
              texts["unlabelled"], *data, *SIZES, "--data.batch_size", "4", "--data.bptt", "20",
              "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2"])
    lm_path = last_checkpoint(run_folders(tmp_path / "lightning_logs" / "pretrain_cpu_lstm")[-1])
    lm = read_checkpoint(lm_path)  # weights_only
    assert checkpoint_kind(lm) == "language_model"

    cli_main(["fit", "--config", str(EXPERIMENTS / "pretrain" / "finetune_lstm.yaml"), *data, *SIZES,
              "--model.pretrained", str(lm_path), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"])
    fitted = read_checkpoint(last_checkpoint(run_folders(tmp_path / "lightning_logs" / "finetune_lstm")[-1]))
    assert checkpoint_kind(fitted) == "sentiment"
    assert data_state(fitted)["tokenizer"] == data_state(lm)["tokenizer"]  # the LM's vocabulary, reused

    # the classifier starts from exactly the language model's embedding and recurrent weights
    encoder = RecurrentEncoder(vocab_size=300, cell="lstm", embed_dim=16, hidden_size=16, pooling="max_mean")
    SentimentClassifier(encoder, pretrained=str(lm_path))
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, lm["state_dict"][f"encoder.{name}"]), name

    with pytest.raises(UserError, match=r"encoder weight .* is \(.*\) there, \(.*\) here"):
        SentimentClassifier(RecurrentEncoder(vocab_size=300, cell="lstm", embed_dim=16, hidden_size=8), pretrained=str(lm_path))
    with pytest.raises(UserError, match=r"holds a sentiment classifier .*, not a language model"):
        SentimentClassifier(RecurrentEncoder(vocab_size=300), pretrained=str(last_checkpoint(
            run_folders(tmp_path / "lightning_logs" / "finetune_lstm")[-1])))


def test_a_collapsed_fine_tuning_stops_saying_so(texts, tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli_main(["pretrain", "--config", str(EXPERIMENTS / "pretrain" / "cpu_lstm.yaml"), "--data.unlabelled_files",
              texts["unlabelled"], "--data.cache_dir", cache_dir, *SIZES, "--data.batch_size", "4",
              "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1", "--data.use_train_texts", "false"])
    lm_path = last_checkpoint(run_folders(tmp_path / "lightning_logs" / "pretrain_cpu_lstm")[-1])
    encoder = RecurrentEncoder(vocab_size=300, cell="lstm", embed_dim=16, hidden_size=16)
    frozen = lambda params: torch.optim.SGD(params, lr=0.0)  # noqa: E731  nothing moves: the collapse stays
    model = SentimentClassifier(encoder, pretrained=str(lm_path), optimizer=frozen, scheduler=None)
    with torch.no_grad():  # a head that says "positive" whatever it reads
        model.head[1].weight.zero_()
        model.head[1].bias.fill_(10.0)
    dm = IMDBDataModule(train_files=[texts["train"]], cache_dir=cache_dir, tokenizer_from=str(lm_path), vocab_size=300)
    with pytest.raises(FineTuningCollapsed, match=r"after epoch 1 every validation review is predicted positive"):
        quick_trainer(tmp_path, max_epochs=3, limit_train_batches=1).fit(model, dm)
