import numpy as np
import pytest
import torch

from imdb_lightning import data as data_module
from imdb_lightning.data import stratified_split
from imdb_lightning.errors import ConfigError, DataError
from imdb_lightning.synthetic import synthetic_reviews
from imdb_lightning.tokenizer import PAD_ID


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
        shards.append(list(data_module.BucketBatchSampler(order, data.lengths, 32)))
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
    ids, _ = full[0]
    expected = ids[:5] if truncation == "head" else ids[-5:]
    assert (cut[0][0] == expected).all()


def test_second_run_reads_the_cache_without_tokenizing(synthetic, monkeypatch):
    first = synthetic(split_seed=7)
    first.dataset("train"), first.dataset("val")

    def fail(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(data_module, "encode", fail)
    monkeypatch.setattr(data_module, "build_tokenizer", fail)
    monkeypatch.setattr(data_module, "synthetic_reviews", fail)
    dm = synthetic(split_seed=7)
    assert len(dm.dataset("train")) == 540 and len(dm.dataset("val")) == 60


def test_local_files_parquet_csv_jsonl(tmp_path, cache_dir):
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet as pq

    from imdb_lightning.data import IMDBDataModule

    texts, labels = synthetic_reviews(200, seed=1)
    table = pa.table({"text": texts, "label": labels})
    pq.write_table(table.slice(0, 100), tmp_path / "a.parquet")
    pyarrow.csv.write_csv(table.slice(100, 50), tmp_path / "b.csv")
    (tmp_path / "c.jsonl").write_text(
        "\n".join(f'{{"text": "{t}", "label": "{"pos" if y else "neg"}"}}' for t, y in zip(texts[150:], labels[150:]))
    )
    files = [str(tmp_path / n) for n in ("a.parquet", "b.csv", "c.jsonl")]
    dm = IMDBDataModule(train_files=files, test_files=files[1], vocab_size=300, cache_dir=cache_dir)
    assert dm.source == "files"
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 200
    assert dm.dataset("test").labels.tolist() == labels[100:150]


def test_aclimdb_folder(tmp_path, cache_dir):
    from imdb_lightning.data import IMDBDataModule

    for split in ("train", "test"):
        for name in ("pos", "neg"):
            folder = tmp_path / "aclImdb" / split / name
            folder.mkdir(parents=True)
            for i in range(10):
                (folder / f"{i}_7.txt").write_text(f"a {'great' if name == 'pos' else 'awful'} film number {i}<br />")
    dm = IMDBDataModule(aclimdb_dir=str(tmp_path / "aclImdb"), vocab_size=50, min_frequency=1, cache_dir=cache_dir)
    assert dm.source == "aclimdb"
    assert len(dm.dataset("train")) == 18 and len(dm.dataset("test")) == 20
    assert sorted(dm.dataset("test").labels.tolist()) == [0] * 10 + [1] * 10


def test_hub_offline_fails_fast_with_a_clear_message(monkeypatch, cache_dir):
    from imdb_lightning import sources
    from imdb_lightning.data import IMDBDataModule

    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=3.0: False)
    dm = IMDBDataModule(cache_dir=cache_dir)
    assert dm.source == "hub"
    with pytest.raises(DataError, match=r"cannot reach the Hugging Face hub.*--data.train_files.*synthetic"):
        dm.prepare_data()


def test_hub_probe_answers_quickly_without_network():
    import time

    from imdb_lightning.sources import hub_reachable

    start = time.monotonic()
    hub_reachable(timeout=3.0)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(max_length=0), "max_length"),
        (dict(batch_size=-1), "batch_size"),
        (dict(val_fraction=1.5), "val_fraction"),
        (dict(source="files"), "train_files"),
        (dict(source="synthetic", train_files="x.csv"), "train_files"),
    ],
)
def test_bad_data_options_are_named(settings, message):
    from imdb_lightning.data import IMDBDataModule

    with pytest.raises(ConfigError, match=message):
        IMDBDataModule(**settings)
