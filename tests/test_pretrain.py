"""Language-model pretraining and fine-tuning, on generated text."""

import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from conftest import EXPERIMENTS, Killed, Stop, quick_trainer, write_reviews
from imdb_lightning.checkpoints import checkpoint_kind, data_state, read_checkpoint
from imdb_lightning.cli import cli_main
from imdb_lightning.data.corpus import CorpusDataModule
from imdb_lightning.data.datamodule import IMDBDataModule
from imdb_lightning.data.synthetic import synthetic_reviews
from imdb_lightning.errors import ConfigError, UserError
from imdb_lightning.models.classifier import FineTuningCollapsed, SentimentClassifier
from imdb_lightning.models.encoders import NBoWEncoder, RecurrentEncoder, build_encoder
from imdb_lightning.models.language_model import LanguageModel
from imdb_lightning.runs import last_checkpoint, read_record, run_folders

SIZES = ["--data.vocab_size", "300", "--model.encoder.init_args.embed_dim", "16",
         "--model.encoder.init_args.hidden_size", "16", "--trainer.enable_progress_bar", "false"]
LM_SIZES = [*SIZES, "--model.adaptive_cutoffs", "[50, 150]"]  # the recipes' cutoffs lie past 300 words


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    unlabelled, _ = synthetic_reviews(400, seed=5)
    reviews, labels = synthetic_reviews(300, seed=0)
    films = [f"tt{i // 3:07d}" for i in range(300)]
    return {"unlabelled": write_reviews(root / "unsup.parquet", unlabelled, [0] * 400),
            "train": write_reviews(root / "train.parquet", reviews, labels, films)}


@pytest.fixture(scope="module")
def lm_path(texts, tmp_path_factory, cache_dir):
    """A two-batch language model of cpu_lstm.yaml's kind (an LSTM, embedding and hidden width 16)."""
    logs = tmp_path_factory.mktemp("lm") / "lightning_logs"
    cli_main(["pretrain", "--config", str(EXPERIMENTS / "pretrain" / "cpu_lstm.yaml"), "--data.unlabelled_files",
              texts["unlabelled"], "--data.cache_dir", cache_dir, *LM_SIZES, "--data.batch_size", "4",
              "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2", "--data.use_train_texts", "false",
              "--trainer.logger.init_args.save_dir", str(logs)])
    return str(last_checkpoint(run_folders(logs / "pretrain_cpu_lstm")[-1]))


def test_a_pretraining_resumes_from_the_command_line(texts, tmp_path, cache_dir):
    logs = tmp_path / "lightning_logs"
    args = ["pretrain", "--config", str(EXPERIMENTS / "pretrain" / "cpu_lstm.yaml"), "--data.unlabelled_files",
            texts["unlabelled"], "--data.cache_dir", cache_dir, *LM_SIZES, "--data.batch_size", "4",
            "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2", "--data.use_train_texts", "false",
            "--trainer.logger.init_args.save_dir", str(logs)]
    cli_main([*args, "--trainer.max_epochs", "1"])
    cli_main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])  # the checkpoint's settings read back
    (run,) = run_folders(logs / "pretrain_cpu_lstm")
    record = read_record(run)
    assert record["status"] == "finished" and len(record["segments"]) == 2
    assert read_checkpoint(last_checkpoint(run))["epoch"] == 2


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


# every recipe pair in experiments/pretrain/: (language model, its fine-tuning)
RECIPES = [("cpu_lstm", "finetune_lstm"), ("cpu_lstm", "finetune_lstm_adv"), ("cpu_rnn", "finetune_rnn"),
           ("gpu_lstm", "gpu_finetune_lstm"), ("cpu_lstm_backward", "finetune_lstm_backward"),
           ("cpu_lstm", "finetune_lstm_concat")]


def test_every_pretraining_recipe_is_run_below():
    assert {p.stem for p in (EXPERIMENTS / "pretrain").glob("*.yaml")} == {name for pair in RECIPES for name in pair}


@pytest.mark.parametrize("lm_recipe, fit_recipe", RECIPES)
def test_every_recipe_pretrains_then_fine_tunes_through_the_command_line(texts, tmp_path, cache_dir, monkeypatch,
                                                                          capsys, lm_recipe, fit_recipe):
    monkeypatch.chdir(tmp_path)
    # (bf16 autocast of an LSTM needs a GPU, or a CPU with bf16 instructions, which CI's may lack)
    data = ["--data.train_files", texts["train"], "--data.cache_dir", cache_dir, "--trainer.precision", "32-true"]
    cli_main(["pretrain", "--config", str(EXPERIMENTS / "pretrain" / f"{lm_recipe}.yaml"), "--data.unlabelled_files",
              texts["unlabelled"], *data, *LM_SIZES, "--data.batch_size", "4", "--data.bptt", "20",
              "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2"])
    lm_path = last_checkpoint(run_folders(tmp_path / "lightning_logs" / f"pretrain_{lm_recipe}")[-1])
    lm = read_checkpoint(lm_path)  # weights_only
    assert checkpoint_kind(lm) == "language_model"
    record = json.loads((lm_path.parent.parent / "run.json").read_text())
    # each epoch 3 windows of 4 streams x 20 tokens
    assert record["train_tokens"] == record["epochs"] * 3 * 4 * 20 and record["train_tokens_per_s"] > 0
    assert "train_samples_per_s" not in record
    said = "".join(capsys.readouterr())  # the next command names the fine-tune recipe of the LM's own cell
    cell = "rnn" if lm_recipe == "cpu_rnn" else "lstm_backward" if "backward" in lm_recipe else "lstm"
    assert f"fit --config experiments/pretrain/finetune_{cell}.yaml --model.pretrained" in said
    # a backward language model read its corpus backwards
    assert lm["datamodule_hyper_parameters"]["reverse"] == ("backward" in lm_recipe)

    cli_main(["fit", "--config", str(EXPERIMENTS / "pretrain" / f"{fit_recipe}.yaml"), *data, *SIZES,
              "--model.pretrained", str(lm_path), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"])
    fitted = read_checkpoint(last_checkpoint(run_folders(tmp_path / "lightning_logs" / fit_recipe)[-1]))
    assert checkpoint_kind(fitted) == "sentiment"

    # another split would validate on training reviews the language model read: refused before a run folder exists
    runs = run_folders(tmp_path / "lightning_logs" / fit_recipe)
    with pytest.raises(SystemExit, match=r"its language model read \d+ of this run's \d+ val reviews \(it was pretrained "
                                         r"beside the split split_seed 0, val_split auto, val_fraction 0.1\)"):
        cli_main(["fit", "--config", str(EXPERIMENTS / "pretrain" / f"{fit_recipe}.yaml"), *data, *SIZES,
                  "--model.pretrained", str(lm_path), "--data.split_seed", "1", "--trainer.max_epochs", "1"])
    assert run_folders(tmp_path / "lightning_logs" / fit_recipe) == runs
    assert data_state(fitted)["tokenizer"] == data_state(lm)["tokenizer"]  # the LM's vocabulary, reused

    # the classifier starts from exactly the language model's embedding and recurrent weights
    spec = lm["hyper_parameters"]["encoder"]
    encoder = build_encoder({**spec, "init_args": {**spec["init_args"], "pooling": "max_mean"}})
    SentimentClassifier(encoder, pretrained=str(lm_path))
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, lm["state_dict"][f"encoder.{name}"]), name

    smaller = {**spec["init_args"], "hidden_size": 8}
    with pytest.raises(UserError, match=r"encoder weight .* is \(.*\) there, \(.*\) here"):
        SentimentClassifier(RecurrentEncoder(**smaller), pretrained=str(lm_path))
    with pytest.raises(UserError, match=r"holds a sentiment classifier .*, not a language model"):
        SentimentClassifier(RecurrentEncoder(vocab_size=300), pretrained=str(last_checkpoint(
            run_folders(tmp_path / "lightning_logs" / fit_recipe)[-1])))


def test_a_backward_language_model_reads_the_corpus_backwards_and_fine_tunes_only_into_a_backward_reader(
        texts, lm_path, cache_dir):
    settings = dict(unlabelled_files=[texts["unlabelled"]], vocab_size=300, batch_size=4, bptt=10, cache_dir=cache_dir)
    forward, backward = CorpusDataModule(**settings), CorpusDataModule(**settings, reverse=True)
    stream = forward.stream("train")
    first = next(iter(backward.train_dataloader()))["input_ids"]  # (streams, bptt)
    per_stream = (len(stream) - 1) // 4
    assert torch.equal(first[0], torch.from_numpy(stream[::-1][:10].astype("int64")))
    assert torch.equal(first[1], torch.from_numpy(stream[::-1][per_stream : per_stream + 10].astype("int64")))
    # lm_path reads forwards: a backward reader must not take its recurrent weights, an embedding alone it may
    spec = read_checkpoint(lm_path)["hyper_parameters"]["encoder"]
    with pytest.raises(UserError, match="reads reviews forwards; give the classifier's encoder reverse: false"):
        SentimentClassifier(build_encoder({**spec, "init_args": {**spec["init_args"], "reverse": True}}), pretrained=lm_path)
    SentimentClassifier(build_encoder({**spec, "init_args": {**spec["init_args"], "reverse": True}}), pretrained=lm_path,
                        pretrained_layers="embedding")


def test_a_collapsed_fine_tuning_stops_saying_so(texts, lm_path, tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    encoder = RecurrentEncoder(vocab_size=300, cell="lstm", embed_dim=16, hidden_size=16)
    frozen = lambda params: torch.optim.SGD(params, lr=0.0)  # noqa: E731  nothing moves: the collapse stays
    model = SentimentClassifier(encoder, pretrained=str(lm_path), optimizer=frozen, scheduler=None)
    with torch.no_grad():  # a head that says "positive" whatever it reads
        model.head[1].weight.zero_()
        model.head[1].bias.fill_(10.0)
    dm = IMDBDataModule(train_files=[texts["train"]], cache_dir=cache_dir, tokenizer_from=str(lm_path), vocab_size=300)
    with pytest.raises(FineTuningCollapsed, match=r"after epoch 1 every validation review is predicted positive"):
        quick_trainer(tmp_path, max_epochs=3, limit_train_batches=1).fit(model, dm)


def test_an_encoder_of_another_kind_takes_the_language_models_embedding_alone(texts, lm_path, tmp_path, cache_dir,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    lm_embedding = read_checkpoint(lm_path)["state_dict"]["encoder.embedding.weight"]  # (vocab, 16)

    # a bidirectional SimpleRNN: the word vectors are the LM's, its recurrent weights stay as initialised
    torch.manual_seed(0)
    fresh = RecurrentEncoder(vocab_size=300, cell="rnn", bidirectional=True, embed_dim=16, hidden_size=8)
    torch.manual_seed(0)
    encoder = RecurrentEncoder(vocab_size=300, cell="rnn", bidirectional=True, embed_dim=16, hidden_size=8)
    SentimentClassifier(encoder, pretrained=lm_path, pretrained_layers="embedding")
    assert torch.equal(encoder.embedding.weight, lm_embedding)
    for name, tensor in fresh.state_dict().items():
        if name != "embedding.weight":
            assert torch.equal(encoder.state_dict()[name], tensor), name
    with pytest.raises(UserError, match=r"pretrained_layers: forward for one layer\), or take its embedding alone"):
        SentimentClassifier(fresh, pretrained=lm_path)  # all layers: the shapes differ

    nbow = NBoWEncoder(vocab_size=300, embed_dim=16)
    SentimentClassifier(nbow, pretrained=lm_path, pretrained_layers="embedding")
    assert torch.equal(nbow.embedding.weight, lm_embedding)
    narrower = r"embedding is \(300, 16\), the encoder's is \(300, 8\); .* embed_dim \(16\) and vocabulary \(300 words\)"
    with pytest.raises(UserError, match=narrower):
        SentimentClassifier(NBoWEncoder(vocab_size=300, embed_dim=8), pretrained=lm_path, pretrained_layers="embedding")
    with pytest.raises(ConfigError, match=r"pretrained_layers must be all, forward or embedding, got 'encoder'"):
        SentimentClassifier(nbow, pretrained=lm_path, pretrained_layers="encoder")

    # from the command line: the tuned SimpleRNN recipe fine-tunes on the LM's vocabulary and word vectors,
    # having read the language model's checkpoint once (vocabulary, tokenizer, weights and digests from one read)
    import imdb_lightning.pretrained as pretrained

    reads, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda path, *a, **k: reads.append(str(path)) or load(path, *a, **k))
    pretrained._read.cache_clear()
    cli_main(["fit", "--config", str(EXPERIMENTS / "tuned" / "rnn.yaml"), "--data.train_files", texts["train"],
              "--data.cache_dir", cache_dir, *SIZES, "--model.pretrained", lm_path, "--model.pretrained_layers",
              "embedding", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"])
    assert reads.count(str(lm_path)) == 1
    fitted = read_checkpoint(last_checkpoint(run_folders(tmp_path / "lightning_logs" / "tuned_rnn")[-1]))
    assert data_state(fitted)["tokenizer"] == data_state(read_checkpoint(lm_path))["tokenizer"]
    assert fitted["hyper_parameters"]["pretrained_layers"] == "embedding"

    # a sweep too (its runs parse no subcommand): the LM's vocabulary and size, whatever data.vocab_size says
    sets = [f"data.train_files={texts['train']}", f"data.cache_dir={cache_dir}", "data.vocab_size=200",
            "model.encoder.init_args.embed_dim=16", "model.encoder.init_args.hidden_size=16", f"model.pretrained={lm_path}",
            "model.pretrained_layers=embedding", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=2", "trainer.enable_progress_bar=false"]
    cli_main(["sweep", "--encoders", "rnn", "--seeds", "0", "--config", str(EXPERIMENTS / "tuned" / "rnn.yaml"),
              "--logdir", str(tmp_path / "swept"), *[a for item in sets for a in ("--set", item)]])
    swept = read_checkpoint(last_checkpoint(run_folders(tmp_path / "swept" / "rnn")[-1]))
    assert data_state(swept)["tokenizer"] == data_state(read_checkpoint(lm_path))["tokenizer"]
    assert swept["hyper_parameters"]["encoder"]["init_args"]["vocab_size"] == 300


def test_a_bidirectional_encoder_takes_the_language_model_into_its_forward_direction(texts, lm_path, tmp_path,
                                                                                   cache_dir, monkeypatch):
    lm = read_checkpoint(lm_path)["state_dict"]
    torch.manual_seed(0)
    fresh = RecurrentEncoder(vocab_size=300, cell="lstm", bidirectional=True, embed_dim=16, hidden_size=16)
    torch.manual_seed(0)
    encoder = RecurrentEncoder(vocab_size=300, cell="lstm", bidirectional=True, embed_dim=16, hidden_size=16)
    SentimentClassifier(encoder, pretrained=lm_path, pretrained_layers="forward")
    for name, tensor in encoder.state_dict().items():  # layers.<layer>.<direction>...: direction 1 reads backwards
        expected = fresh.state_dict()[name] if name.startswith("layers.0.1.") else lm[f"encoder.{name}"]
        assert torch.equal(tensor, expected), name
    assert any(name.startswith("layers.0.1.") for name in encoder.state_dict())

    with pytest.raises(UserError, match=r"this encoder reads one way, so take all the language model's layers"):
        SentimentClassifier(RecurrentEncoder(vocab_size=300, cell="lstm", embed_dim=16, hidden_size=16),
                            pretrained=lm_path, pretrained_layers="forward")
    with pytest.raises(UserError, match=r"the language model has no layers\.1\.0\.weight_ih_l0"):
        SentimentClassifier(RecurrentEncoder(vocab_size=300, cell="lstm", bidirectional=True, num_layers=2,
                                             embed_dim=16, hidden_size=16), pretrained=lm_path, pretrained_layers="forward")
    with pytest.raises(UserError, match=r"weight_ih_l0 is \(64, 16\) there, \(16, 16\) here"):
        SentimentClassifier(RecurrentEncoder(vocab_size=300, cell="rnn", bidirectional=True, embed_dim=16, hidden_size=16),
                            pretrained=lm_path, pretrained_layers="forward")  # another cell

    # from the command line, the tuned BiLSTM recipe
    monkeypatch.chdir(tmp_path)
    cli_main(["fit", "--config", str(EXPERIMENTS / "tuned" / "bilstm.yaml"), "--data.train_files", texts["train"],
              "--data.cache_dir", cache_dir, *SIZES, "--model.pretrained", lm_path, "--model.pretrained_layers",
              "forward", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2"])
    fitted = read_checkpoint(last_checkpoint(run_folders(tmp_path / "lightning_logs" / "tuned_bilstm")[-1]))
    assert fitted["hyper_parameters"]["pretrained_layers"] == "forward"
    assert data_state(fitted)["tokenizer"] == data_state(read_checkpoint(lm_path))["tokenizer"]


@pytest.mark.parametrize("cutoffs", [[], [10], [5, 40, 200]])
def test_the_adaptive_softmax_is_a_distribution_and_its_loss_is_its_cross_entropy(cutoffs):
    torch.manual_seed(0)
    model = LanguageModel(RecurrentEncoder(vocab_size=300, embed_dim=8, hidden_size=12), adaptive_cutoffs=cutoffs).eval()
    with torch.no_grad():
        model.output_bias.normal_()
        model.cluster_vectors.normal_()
    ids = torch.randint(2, 300, (3, 7))  # (batch, time)
    targets = torch.randint(0, 300, (3, 7))
    log_probs, _ = model(ids)  # (time, batch, vocab)
    assert log_probs.shape == (7, 3, 300)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(7, 3))
    features, _ = model.hidden(ids)
    loss = model.loss(features.reshape(-1, 8), targets.t().reshape(-1))
    torch.testing.assert_close(loss, F.nll_loss(log_probs.reshape(-1, 300), targets.t().reshape(-1)))


def test_adaptive_cutoffs_that_do_not_rise_within_the_vocabulary_are_refused():
    for bad in ([300], [50, 20], [1]):
        with pytest.raises(ConfigError, match="adaptive_cutoffs"):
            LanguageModel(RecurrentEncoder(vocab_size=300, embed_dim=8, hidden_size=8), adaptive_cutoffs=bad)


def _pretrain(tmp_path, corpus, stop=None, resume=False):
    from imdb_lightning.callbacks import LastCheckpoint

    L.seed_everything(0, verbose=False)
    model = LanguageModel(RecurrentEncoder(vocab_size=300, cell="lstm", embed_dim=16, hidden_size=16, embed_dropout=0.2,
                                           dropout=0.2), optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), adaptive_cutoffs=[50])
    dm = CorpusDataModule(unlabelled_files=[corpus], vocab_size=300, batch_size=16, bptt=20, cache_dir=str(tmp_path / "cache"))
    trainer = quick_trainer(tmp_path, max_epochs=2, limit_val_batches=3, enable_checkpointing=True,
                            callbacks=[LastCheckpoint(every_n_train_steps=5), *([stop] if stop else [])])
    last = tmp_path / "checkpoints" / "last.ckpt"
    if stop is None:
        trainer.fit(model, dm, ckpt_path=str(last) if resume else None)
    else:
        with pytest.raises(Killed):
            trainer.fit(model, dm)
    return trainer, model


def test_a_resumed_pretraining_is_the_run_never_stopped(texts, tmp_path):
    reference, reference_model = _pretrain(tmp_path / "reference", texts["unlabelled"])
    steps = reference.global_step
    kill = steps * 3 // 4 // 5 * 5 + 3  # in the second epoch, 3 steps after a step checkpoint
    _pretrain(tmp_path / "resumed", texts["unlabelled"], stop=Stop("batch_end", kill, Killed))
    saved = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == kill - 3 and saved["epoch"] == 1 and "carried_state" in saved
    resumed, resumed_model = _pretrain(tmp_path / "resumed", texts["unlabelled"], resume=True)
    assert resumed.global_step == steps
    for name, tensor in reference_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[name], tensor, atol=1e-6, rtol=0, msg=name)
    for name in ("train/loss_epoch", "train/ppl", "val/loss", "val/ppl"):
        torch.testing.assert_close(resumed.callback_metrics[name], reference.callback_metrics[name], atol=1e-6, rtol=0)


def test_a_fine_tuning_run_is_checked_against_the_reviews_its_language_model_read(texts, lm_path, tmp_path, capsys):
    from imdb_lightning.data.sources import FileSource
    from imdb_lightning.pretrained import check_unread, resolve

    unlabelled = FileSource([], [], None, [texts["unlabelled"]]).load("unlabelled").texts
    labelled = IMDBDataModule(train_files=[texts["train"]]).reviews("val").texts
    check_unread(resolve(lm_path), labelled, "val")  # the LM read the unlabelled reviews only
    assert capsys.readouterr().err == ""
    # copies of some of them among its unlabelled reviews (IMDB's unsup set has a few): named, not refused
    check_unread(resolve(lm_path), unlabelled[:3] + labelled[:2], "test")
    assert "read the text (not the label) of 3 of this run's 5 test reviews" in capsys.readouterr().err

    old = torch.load(lm_path, weights_only=True)  # a language model from before the record
    del data_state(old)["read"]
    torch.save(old, tmp_path / "old.ckpt")
    check_unread(resolve(str(tmp_path / "old.ckpt")), unlabelled, "val")
    assert "predates the record of the reviews it read" in capsys.readouterr().err


@pytest.mark.parametrize("settings, labelled", [
    ({"unlabelled_files": "unsup.parquet", "train_files": None, "source": None, "use_train_texts": True}, False),
    ({"unlabelled_files": "unsup.parquet", "train_files": "train.parquet", "source": None, "use_train_texts": True}, True),
    ({"unlabelled_files": "unsup.parquet", "train_files": "train.parquet", "source": None, "use_train_texts": False}, False),
    ({"unlabelled_files": None, "train_files": None, "source": None, "use_train_texts": True}, True),  # the hub's
    ({"unlabelled_files": None, "train_files": None, "source": "aclimdb", "aclimdb_dir": "aclImdb"}, True),
])
def test_a_language_model_from_before_the_record_says_from_its_settings_whether_it_read_labelled_reviews(settings,
                                                                                                       labelled):
    from imdb_lightning.pretrained import read_labelled

    assert read_labelled(settings) is labelled


def test_the_language_model_drops_its_recurrent_weights_while_training_when_asked():
    torch.manual_seed(0)
    model = LanguageModel(RecurrentEncoder(vocab_size=60, cell="lstm", embed_dim=8, hidden_size=8, weight_drop=0.5))
    ids = torch.randint(2, 60, (3, 12))
    model.eval()
    plain = model(ids)[0]
    model.train()
    torch.manual_seed(1)
    dropped = model(ids)[0]
    assert not torch.allclose(dropped, plain)  # (no other dropout in this model: the weight drop did it)
    dropped.sum().backward()
    assert model.encoder.layers[0][0].weight_hh_l0.grad.abs().sum() > 0  # the dropped weights still learn
    model.encoder.weight_drop = 0.0
    torch.testing.assert_close(model(ids)[0], plain)


@pytest.fixture(scope="module")
def split_lm(tmp_path_factory, cache_dir):
    """A language model that read the training split (grouped by film, seed 0, 10%) of 300 labelled reviews."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("split_lm")
    reviews, labels = synthetic_reviews(300, seed=0)
    table = pa.table({"text": reviews, "label": labels, "movie": [f"tt{i // 3:07d}" for i in range(300)],
                      "director": [f"d{i // 7:03d}" for i in range(300)]})
    pq.write_table(table, root / "train.parquet")
    pq.write_table(table.slice(0, 200), root / "fewer.parquet")  # another train_files: another split of them
    unlabelled, _ = synthetic_reviews(100, seed=5)
    logs = root / "logs"
    cli_main(["pretrain", "--config", str(EXPERIMENTS / "pretrain" / "cpu_lstm.yaml"), "--data.unlabelled_files",
              write_reviews(root / "unsup.parquet", unlabelled, [0] * 100), "--data.train_files", str(root / "train.parquet"),
              "--data.cache_dir", cache_dir, *LM_SIZES, "--data.batch_size", "4", "--trainer.limit_train_batches", "2",
              "--trainer.limit_val_batches", "2", "--trainer.logger.init_args.save_dir", str(logs)])
    return {"lm": str(last_checkpoint(run_folders(logs / "pretrain_cpu_lstm")[-1])), "train": str(root / "train.parquet"),
            "fewer": str(root / "fewer.parquet"), "unlabelled": unlabelled}


@pytest.mark.parametrize("change", [{"split_seed": 1}, {"val_fraction": 0.3}, {"val_split": "random"},
                                    {"train_files": "fewer"}, {"group_column": "director"}],
                         ids=["split_seed", "val_fraction", "val_split", "train_files", "group_column"])
def test_a_fine_tuning_split_that_differs_in_any_split_setting_is_refused(split_lm, cache_dir, change):
    from imdb_lightning.pretrained import check_unread, resolve

    change = {k: split_lm[v] if v == "fewer" else v for k, v in change.items()}
    dm = IMDBDataModule(**{"train_files": split_lm["train"], "cache_dir": cache_dir, **change})
    val = dm.reviews("val").texts
    # what the language model read: its split's training reviews (never its validation ones) and the unlabelled
    read = set(IMDBDataModule(train_files=split_lm["train"], cache_dir=cache_dir).reviews("train").texts)
    read |= set(split_lm["unlabelled"])
    seen = sum(text in read for text in val)
    assert seen > 0  # this split validates on reviews the language model trained on
    with pytest.raises(UserError, match=rf"its language model read {seen} of this run's {len(val)} val reviews \(it was "
                                        r"pretrained beside the split split_seed 0, val_split auto, val_fraction 0.1\)"):
        check_unread(resolve(split_lm["lm"]), val, "val", dict(dm.hparams))


def test_the_language_models_own_split_is_accepted_in_silence(split_lm, cache_dir, capsys):
    from imdb_lightning.pretrained import check_unread, resolve

    dm = IMDBDataModule(train_files=[split_lm["train"]], cache_dir=cache_dir)  # one file or a list of it: the same
    check_unread(resolve(split_lm["lm"]), dm.reviews("val").texts, "val", dict(dm.hparams))
    assert capsys.readouterr().err == ""
