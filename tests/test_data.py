import numpy as np
import pytest
import torch

from conftest import write_reviews
from imdb_lightning.data import datamodule as data_module
from imdb_lightning.data.batching import BucketBatchSampler
from imdb_lightning.data.datamodule import IMDBDataModule
from imdb_lightning.data.split import grouped_split, stratified_split
from imdb_lightning.data.synthetic import synthetic_reviews
from imdb_lightning.data.tokenizer import PAD_ID
from imdb_lightning.errors import ConfigError, DataError
from imdb_lightning.standard_error import clustered_standard_error


def test_synthetic_corpus_is_deterministic_balanced_and_order_dependent():
    texts, labels = synthetic_reviews(400, seed=3)
    assert (texts, labels) == synthetic_reviews(400, seed=3)
    assert sum(labels) == 200
    # "not" occurs in both classes, so only its position next to the adjective decides the label
    with_not = [label for text, label in zip(texts, labels) if " not " in text]
    assert 0.3 < np.mean(with_not) < 0.7
    negated_good = [label for text, label in zip(texts, labels) if "was not good" in text]
    assert negated_good and set(negated_good) == {0}


def test_batches_have_padding_lengths_and_labels(synthetic):
    dm = synthetic()
    batch = next(iter(dm.train_dataloader()))
    ids, lengths, labels = batch["input_ids"], batch["lengths"], batch["labels"]
    assert ids.dtype == torch.long and ids.shape == (32, int(lengths.max()))
    assert lengths.shape == labels.shape == (32,) and set(labels.tolist()) <= {0, 1}
    for row, length in zip(ids, lengths):
        assert (row[length:] == PAD_ID).all() and (row[:length] != PAD_ID).all()
    assert int(lengths.max()) <= 120


def test_bucketing_covers_every_example_once_and_groups_lengths(synthetic):
    dm = synthetic()
    loader = dm.train_dataloader()
    seen = [i for batch in loader.batch_sampler for i in batch]
    assert sorted(seen) == list(range(len(dm.dataset("train"))))
    lengths = dm.dataset("train").lengths
    spread = np.mean([np.ptp(lengths[b]) for b in loader.batch_sampler])
    random_spread = np.mean([np.ptp(lengths[np.random.default_rng(0).choice(len(lengths), 32)]) for _ in range(20)])
    assert spread < random_spread / 2


def test_bucketing_is_seeded_and_reshuffled_each_epoch(synthetic):
    first = list(synthetic().train_dataloader().batch_sampler)
    again = list(synthetic().train_dataloader().batch_sampler)
    assert first == again
    sampler = synthetic().train_dataloader().batch_sampler
    sampler.sampler.set_epoch(1)
    assert list(sampler) != first


def test_distributed_shards_are_disjoint_and_equal(synthetic):
    dm = synthetic()
    data = dm.dataset("train")
    shards = []
    for rank in range(2):
        order = torch.utils.data.DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=0)
        shards.append(list(BucketBatchSampler(order, data.lengths, 32)))
    assert len(shards[0]) == len(shards[1])
    flat = [set(i for b in s for i in b) for s in shards]
    assert len(flat[0] & flat[1]) <= 1  # DistributedSampler repeats at most one example to even out an odd count


def test_validation_is_stratified_held_out_and_seeded():
    labels = np.array([0] * 300 + [1] * 100)
    train, val = stratified_split(labels, 0.1, seed=0)
    assert len(val) == 40 and labels[val].sum() == 10
    assert not set(train) & set(val) and len(train) + len(val) == 400
    assert (stratified_split(labels, 0.1, seed=0)[1] == val).all()
    assert not (stratified_split(labels, 0.1, seed=1)[1] == val).all()


@pytest.mark.parametrize("truncation", ["head", "tail"])
def test_truncation_keeps_head_or_tail(synthetic, truncation):
    full = synthetic(max_length=10_000).dataset("train")
    cut = synthetic(max_length=5, truncation=truncation).dataset("train")
    ids = full[0][0]
    expected = ids[:5] if truncation == "head" else ids[-5:]
    assert (cut[0][0] == expected).all()


def test_second_run_reads_the_cache_without_tokenizing(synthetic, monkeypatch):
    first = synthetic(split_seed=7)
    first.dataset("train"), first.dataset("val")

    def fail(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(data_module, "encode", fail)
    monkeypatch.setattr(data_module, "build_tokenizer", fail)
    monkeypatch.setattr("imdb_lightning.data.sources.synthetic_reviews", fail)
    dm = synthetic(split_seed=7)
    assert len(dm.dataset("train")) == 540 and len(dm.dataset("val")) == 60


def test_local_files_parquet_csv_jsonl(tmp_path, cache_dir):
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet as pq

    texts, labels = synthetic_reviews(200, seed=1)
    table = pa.table({"text": texts, "label": labels})
    pq.write_table(table.slice(0, 100), tmp_path / "a.parquet")
    pyarrow.csv.write_csv(table.slice(100, 50), tmp_path / "b.csv")
    (tmp_path / "c.jsonl").write_text(
        "\n".join(f'{{"text": "{t}", "label": "{"pos" if y else "neg"}"}}' for t, y in zip(texts[150:], labels[150:]))
    )
    files = [str(tmp_path / n) for n in ("a.parquet", "b.csv", "c.jsonl")]
    dm = IMDBDataModule(train_files=files, test_files=files[1], vocab_size=300, cache_dir=cache_dir)
    assert dm.source_name == "files"
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 200
    assert dm.dataset("test").labels.tolist() == labels[100:150]


def test_aclimdb_folder(tmp_path, cache_dir):
    for split in ("train", "test"):
        for name in ("pos", "neg"):
            folder = tmp_path / "aclImdb" / split / name
            folder.mkdir(parents=True)
            for i in range(10):
                (folder / f"{i}_7.txt").write_text(f"a {'great' if name == 'pos' else 'awful'} film number {i}<br />")
    dm = IMDBDataModule(aclimdb_dir=str(tmp_path / "aclImdb"), vocab_size=50, min_frequency=1, cache_dir=cache_dir)
    assert dm.source_name == "aclimdb"
    assert len(dm.dataset("train")) == 18 and len(dm.dataset("test")) == 20
    assert sorted(dm.dataset("test").labels.tolist()) == [0] * 10 + [1] * 10


def test_hub_offline_fails_fast_with_a_clear_message(monkeypatch, cache_dir):
    from imdb_lightning.data import sources

    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=3.0: False)
    dm = IMDBDataModule(cache_dir=cache_dir)
    assert dm.source_name == "hub"
    with pytest.raises(DataError, match=r"cannot reach the Hugging Face hub.*--data.train_files.*synthetic"):
        dm.prepare_data()


def test_hub_probe_needs_an_https_answer(monkeypatch):
    import ssl
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    from imdb_lightning.data.sources import hub_reachable

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    answers = []

    def urlopen(request, timeout):
        answers.append(timeout)
        raise answer

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    # a port that opens but fails TLS, a refused connection, a timeout: unreachable, within the timeout given
    for failure in (urllib.error.URLError(ssl.SSLError("handshake failed")), ConnectionRefusedError(), TimeoutError()):
        answer = failure
        assert hub_reachable(timeout=2.0) is False
    # any HTTP status means the hub answered
    answer = urllib.error.HTTPError(constants.ENDPOINT, 404, "not found", {}, None)
    assert hub_reachable(timeout=2.0) is True
    assert answers == [2.0] * 4
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the user chose the local cache: no probe
    assert hub_reachable() is True and len(answers) == 4


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(max_length=0), "max_length"),
        (dict(batch_size=-1), "batch_size"),
        (dict(val_fraction=1.5), "val_fraction"),
        (dict(source="files"), "train_files"),
        (dict(synthetic_size=0), "synthetic_size"),
        (dict(eval_batch_size=0), "eval_batch_size"),
        (dict(source="synthetic", group_column="film"), "group_column"),
        (dict(source="synthetic", train_files="x.csv"), "train_files"),
    ],
)
def test_bad_data_options_are_named(settings, message):
    with pytest.raises(ConfigError, match=message):
        IMDBDataModule(**settings)


# --- validation on unseen films ----------------------------------------------------------------
def film_corpus(n_films=60, seed=0):
    """Reviews of films where most reviews of one film share a label (as on IMDB)."""
    rng = np.random.default_rng(seed)
    texts, labels, films = [], [], []
    for film in range(n_films):
        lean = rng.integers(2)
        for i in range(int(rng.integers(1, 12))):
            label = int(lean if rng.random() < 0.9 else 1 - lean)
            texts.append(f"film{film} review {i} {'good' if label else 'bad'}")
            labels.append(label)
            films.append(f"tt{film:07d}")
    return texts, labels, films


def test_grouped_split_holds_out_whole_films_and_keeps_the_balance():
    texts, labels, films = film_corpus(400)
    labels, films = np.array(labels), np.array(films, dtype=object)
    train, val = grouped_split(labels, films, 0.1, seed=0)
    assert not set(films[train]) & set(films[val])  # no film on both sides
    assert len(train) + len(val) == len(labels) and not set(train) & set(val)
    assert abs(len(val) / len(labels) - 0.1) < 0.01
    assert abs(labels[val].mean() - labels.mean()) < 0.02  # the label balance of the whole
    again, other = grouped_split(labels, films, 0.1, seed=0)[1], grouped_split(labels, films, 0.1, seed=1)[1]
    assert (again == val).all() and set(other) != set(val)


def test_files_with_a_movie_column_validate_on_unseen_films_by_default(tmp_path, cache_dir):
    texts, labels, films = film_corpus()
    path = write_reviews(tmp_path / "films.parquet", texts, labels, films)
    dm = IMDBDataModule(train_files=path, vocab_size=100, min_frequency=1, val_fraction=0.2, cache_dir=cache_dir)
    train, val = dm.reviews("train"), dm.reviews("val")
    assert not set(train.groups) & set(val.groups)
    assert dm.validation["kind"] == "grouped" and dm.validation["films"] == len(set(val.groups))
    # the cached token ids carry each review's film, numbered within the split
    data = dm.dataset("val")
    assert len(np.unique(data.groups)) == dm.validation["films"]
    # random stays available, and then films are shared
    shared = IMDBDataModule(train_files=path, vocab_size=100, min_frequency=1, val_fraction=0.2, val_split="random",
                            cache_dir=cache_dir)
    assert set(shared.reviews("train").groups) & set(shared.reviews("val").groups)
    assert shared.dataset("val") is not data and shared.validation["kind"] == "random"


def test_a_named_group_column_and_its_absence(tmp_path, cache_dir):
    texts, labels, films = film_corpus()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": texts, "label": labels, "film": films}), tmp_path / "f.parquet")
    dm = IMDBDataModule(train_files=str(tmp_path / "f.parquet"), group_column="film", cache_dir=cache_dir)
    assert not set(dm.reviews("train").groups) & set(dm.reviews("val").groups)
    missing = IMDBDataModule(train_files=str(tmp_path / "f.parquet"), group_column="title", cache_dir=cache_dir)
    with pytest.raises(DataError, match=r"f.parquet: missing column\(s\) title"):
        missing.reviews("train")
    plain = write_reviews(tmp_path / "plain.parquet", texts, labels)
    with pytest.raises(DataError, match="val_split grouped needs the film of each review"):
        IMDBDataModule(train_files=plain, val_split="grouped", cache_dir=cache_dir).reviews("train")
    assert IMDBDataModule(train_files=plain, cache_dir=cache_dir).reviews("val") is not None  # auto: random


def test_aclimdb_urls_name_the_films(tmp_path, cache_dir):
    root = tmp_path / "aclImdb"
    texts, labels, films = film_corpus(80)
    for name, label in (("neg", 0), ("pos", 1)):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        mine = [(t, f) for t, y, f in zip(texts, labels, films) if y == label]
        for i, (text, _) in enumerate(mine):
            (folder / f"{i}_{8 if label else 2}.txt").write_text(text)
        # line N of urls_<name>.txt is review N's film page
        (root / "train" / f"urls_{name}.txt").write_text(
            "\n".join(f"http://www.imdb.com/title/{film}/usercomments" for _, film in mine) + "\n"
        )
    dm = IMDBDataModule(aclimdb_dir=str(root), vocab_size=100, min_frequency=1, val_fraction=0.2, cache_dir=cache_dir)
    train, val = dm.reviews("train"), dm.reviews("val")
    assert dm.validation["kind"] == "grouped"
    assert not set(train.groups) & set(val.groups)
    for text, film in zip(val.texts, val.groups):  # every review kept its own film
        assert text.startswith(f"film{int(film[2:])} ")


def test_too_little_data_is_refused_before_training(tmp_path, cache_dir):
    few = write_reviews(tmp_path / "few.parquet", ["good", "bad"] * 5, [1, 0] * 5)
    with pytest.raises(DataError, match=r"10 reviews.*val_fraction 0.01 leaves the validation split empty"):
        IMDBDataModule(train_files=few, val_fraction=0.01, cache_dir=cache_dir).reviews("train")
    with pytest.raises(DataError, match=r"val_fraction 0.95 leaves the training split empty"):
        IMDBDataModule(train_files=few, val_fraction=0.95, cache_dir=cache_dir).reviews("train")


def test_clustered_standard_error():
    # independent reviews: the binomial error
    correct = np.array([1.0] * 80 + [0.0] * 20)
    assert clustered_standard_error(correct, np.arange(100)) == pytest.approx(np.sqrt(0.8 * 0.2 / 100), rel=0.02)
    # the same outcomes in 10 films of 10 reviews, each film all right or all wrong: ten times the variance
    films = np.repeat(np.arange(10), 10)
    assert clustered_standard_error(correct, films) == pytest.approx(np.sqrt(0.8 * 0.2 / 10), rel=0.1)


def test_aclimdb_urls_with_fewer_lines_than_reviews_are_refused(tmp_path, cache_dir):
    root = tmp_path / "aclImdb"
    for name in ("neg", "pos"):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(20):
            (folder / f"{i}_{2 if name == 'neg' else 8}.txt").write_text(f"{name} review {i}")
        lines = 20 if name == "neg" else 5  # pos: 15 reviews would each be a "film" of their own
        (root / "train" / f"urls_{name}.txt").write_text("".join(f"http://www.imdb.com/title/tt{i:07d}/\n" for i in range(lines)))
    with pytest.raises(DataError, match=r"urls_pos.txt: 5 lines for 20 reviews .*5_8.txt has no line"):
        IMDBDataModule(aclimdb_dir=str(root), vocab_size=50, min_frequency=1, cache_dir=cache_dir).reviews("train")
