"""IMDBDataModule: raw reviews -> cached token ids -> length-bucketed, dynamically padded batches."""

from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Literal, Optional, Union

import lightning as L
import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from . import sources
from .errors import ConfigError, DataError
from .synthetic import synthetic_reviews
from .tokenizer import PAD_ID, UNK_ID, build_tokenizer, encode

Source = Literal["hub", "files", "aclimdb", "synthetic"]


class TokenizedReviews(Dataset):
    """Ragged token ids (flat array + offsets), truncated on access so the cache serves any max_length."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, labels: np.ndarray, max_length: int, truncation: str):
        self.ids, self.offsets, self.labels = ids, offsets, labels
        self.max_length, self.keep_tail = max_length, truncation == "tail"

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.clip(np.diff(self.offsets), 1, self.max_length)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        ids = self.ids[self.offsets[i] : self.offsets[i + 1]]
        if len(ids) > self.max_length:
            ids = ids[-self.max_length :] if self.keep_tail else ids[: self.max_length]
        if len(ids) == 0:  # an empty review reads as one unknown word, so every length is >= 1
            ids = np.array([UNK_ID], dtype=np.int32)
        return ids, int(self.labels[i])


def collate(samples: list[tuple[np.ndarray, int]]) -> dict[str, torch.Tensor]:
    lengths = np.array([len(ids) for ids, _ in samples], dtype=np.int64)
    input_ids = np.full((len(samples), lengths.max()), PAD_ID, dtype=np.int64)  # (batch, time)
    for row, (ids, _) in enumerate(samples):
        input_ids[row, : len(ids)] = ids
    return {
        "input_ids": torch.from_numpy(input_ids),
        "lengths": torch.from_numpy(lengths),
        "labels": torch.tensor([label for _, label in samples], dtype=torch.long),
    }


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length reviews, so padding stays short.

    `sampler` picks this process's share of the data in a seeded order (a DistributedSampler,
    also with one process: Lightning calls its `set_epoch`). Within pools of `pool` batches the
    reviews are sorted by length and cut into batches; the batches are then shuffled. Without
    shuffling, all reviews are sorted by length (fastest for evaluation).
    """

    def __init__(self, sampler: DistributedSampler, lengths: np.ndarray, batch_size: int, pool: int = 50):
        self.sampler, self.lengths, self.batch_size, self.pool = sampler, lengths, batch_size, pool

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self):
        order = np.fromiter(self.sampler, dtype=np.int64)
        shuffle = self.sampler.shuffle
        size = self.batch_size * self.pool if shuffle else len(order)
        chunks = [order[i : i + size] for i in range(0, len(order), size)]
        order = np.concatenate([c[np.argsort(self.lengths[c], kind="stable")] for c in chunks])
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if shuffle:
            rng = np.random.default_rng([self.sampler.seed, self.sampler.epoch])
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return iter(batches)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held.append(members[: int(round(fraction * len(members)))])
    val = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), val), val


def _digest(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_arrays(path: str, **arrays: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
        np.savez(f, **arrays)


def _default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "imdb-lightning")


class IMDBDataModule(L.LightningDataModule):
    """IMDB reviews as padded batches of `input_ids`, `lengths` and `labels`.

    Args:
        source: hub | files | aclimdb | synthetic; by default `files` when `train_files` is
            given, `aclimdb` when `aclimdb_dir` is, else `hub`.
        train_files: parquet/csv/json/jsonl files with `text` and `label` columns.
        test_files: the same, for `test`; only `test` reads them.
        aclimdb_dir: the Stanford `aclImdb/` folder (train/pos, train/neg, test/...).
        hub_name: the Hugging Face dataset for the hub source.
        synthetic_size: reviews in the synthetic train split (the test split is half as many).
        synthetic_median_words: median review length of the synthetic corpus.
        val_fraction: share of train held out for validation, stratified by label.
        split_seed: seed of that split, of the training batch order and of the synthetic corpus
            (the run's own seed sets initialisation and dropout, so seeds compare models on the same batches).
        vocab_size: vocabulary cap including `<pad>` and `<unk>`; also the model's embedding rows.
        min_frequency: words seen fewer times in train become `<unk>`.
        lowercase: lowercase before tokenizing.
        max_length: tokens kept per review.
        truncation: keep the `head` or the `tail` of longer reviews.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (default: 2 x batch_size).
        bucketing: length-bucketed training batches (else shuffled reviews of any length).
        num_workers: DataLoader workers; 0 is fastest on 2 cores, where a worker takes a core from the model.
        cache_dir: where tokenized data is kept (default ~/.cache/imdb-lightning).
    """

    def __init__(
        self,
        source: Optional[Source] = None,
        train_files: Optional[Union[str, list[str]]] = None,
        test_files: Optional[Union[str, list[str]]] = None,
        aclimdb_dir: Optional[str] = None,
        hub_name: str = "stanfordnlp/imdb",
        synthetic_size: int = 4000,
        synthetic_median_words: int = 60,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        vocab_size: int = 20000,
        min_frequency: int = 2,
        lowercase: bool = True,
        max_length: int = 400,
        truncation: Literal["head", "tail"] = "head",
        batch_size: int = 64,
        eval_batch_size: Optional[int] = None,
        bucketing: bool = True,
        num_workers: int = 0,
        cache_dir: Optional[str] = None,
    ):
        super().__init__()
        for name, value in dict(vocab_size=vocab_size, max_length=max_length, batch_size=batch_size).items():
            if value < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {value}")
        if vocab_size < 3:
            raise ConfigError(f"data.vocab_size must leave room for a word beside <pad> and <unk>, got {vocab_size}")
        if not 0 < val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
        self.train_files = [train_files] if isinstance(train_files, str) else train_files
        self.test_files = [test_files] if isinstance(test_files, str) else test_files
        self.source = source or ("files" if train_files else "aclimdb" if aclimdb_dir else "hub")
        if self.source == "files" and not self.train_files:
            raise ConfigError("data.source is 'files' but data.train_files is not set")
        if self.source == "aclimdb" and not aclimdb_dir:
            raise ConfigError("data.source is 'aclimdb' but data.aclimdb_dir is not set")
        if self.source != "files" and (self.train_files or self.test_files):
            raise ConfigError(f"data.train_files/test_files are given but data.source is {self.source!r}")
        self.save_hyperparameters()
        self.cache_dir = Path(cache_dir or _default_cache_dir())
        self.tokenizer: Optional[Tokenizer] = None
        self._raw: dict[str, tuple[list[str], np.ndarray]] = {}
        self._datasets: dict[str, TokenizedReviews] = {}

    # --- raw data -------------------------------------------------------------------------
    def _fingerprint(self, split: str) -> list:
        hp = self.hparams
        if self.source == "files":
            files = self.train_files if split != "test" else self.test_files
            return ["files", sources.fingerprint(files or [])]
        if self.source == "aclimdb":
            return ["aclimdb", sources.fingerprint([os.path.join(hp.aclimdb_dir, "train" if split != "test" else "test")])]
        if self.source == "synthetic":
            return ["synthetic", hp.synthetic_size, hp.synthetic_median_words, hp.split_seed]
        return ["hub", hp.hub_name]

    def _load(self, split: Literal["train", "test"]) -> tuple[list[str], list[int]]:
        hp = self.hparams
        if self.source == "synthetic":
            n, seed = (hp.synthetic_size, hp.split_seed) if split == "train" else (hp.synthetic_size // 2, hp.split_seed + 1)
            return synthetic_reviews(n, seed=seed, median_words=hp.synthetic_median_words)
        if self.source == "aclimdb":
            return sources.load_aclimdb(hp.aclimdb_dir, split)
        if self.source == "files":
            files = self.train_files if split == "train" else self.test_files
            if not files:
                raise DataError("no test data: pass --data.test_files (test never uses the validation split)")
            return sources.load_files(files)
        return sources.load_hub(hp.hub_name, split)

    def _raw_split(self, split: str) -> tuple[list[str], np.ndarray]:
        if split not in self._raw:
            if split == "test":
                texts, labels = self._load("test")
                self._raw["test"] = texts, np.asarray(labels, dtype=np.int8)
            else:
                texts, labels = self._load("train")
                labels = np.asarray(labels, dtype=np.int8)
                if len(np.unique(labels)) < 2:
                    raise DataError(f"the training data has only label {labels[0]}; it needs both classes")
                train, val = stratified_split(labels, self.hparams.val_fraction, self.hparams.split_seed)
                for name, idx in (("train", train), ("val", val)):
                    self._raw[name] = [texts[i] for i in idx], labels[idx]
        return self._raw[split]

    # --- tokenizer and cached token ids -----------------------------------------------------
    def _tokenizer_key(self) -> str:
        hp = self.hparams
        return _digest(self._fingerprint("train"), hp.val_fraction, hp.split_seed, hp.vocab_size, hp.min_frequency, hp.lowercase)

    def get_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            path = self.cache_dir / f"tokenizer-{self._tokenizer_key()}.json"
            if path.is_file():
                self.tokenizer = Tokenizer.from_file(str(path))
            else:
                hp = self.hparams
                texts, _ = self._raw_split("train")
                self.tokenizer = build_tokenizer(texts, hp.vocab_size, hp.min_frequency, hp.lowercase)
                self._atomic_write(path, lambda tmp: self.tokenizer.save(tmp))
        return self.tokenizer

    def _atomic_write(self, path: Path, write) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        write(str(tmp))
        os.replace(tmp, path)

    def dataset(self, split: Literal["train", "val", "test"]) -> TokenizedReviews:
        if split not in self._datasets:
            tokenizer = self.get_tokenizer()
            hp = self.hparams
            key = _digest(split, self._fingerprint(split), hp.val_fraction, hp.split_seed, tokenizer.to_str())
            path = self.cache_dir / f"{split}-{key}.npz"
            if path.is_file():
                with np.load(path) as z:
                    ids, offsets, labels = z["ids"], z["offsets"], z["labels"]
            else:
                texts, labels = self._raw_split(split)
                ids, offsets = encode(tokenizer, texts)
                self._atomic_write(path, lambda tmp: _save_arrays(tmp, ids=ids, offsets=offsets, labels=labels))
            self._datasets[split] = TokenizedReviews(ids, offsets, labels, hp.max_length, hp.truncation)
        return self._datasets[split]

    # --- Lightning hooks --------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Downloads only, once per node; tokenizing waits for the dataloaders, which Lightning
        # asks for after a checkpoint's tokenizer has been restored.
        if self.source == "hub" and not (self.cache_dir / f"tokenizer-{self._tokenizer_key()}.json").is_file():
            sources.load_hub(self.hparams.hub_name, "train")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self.dataset(split)
        trainer = getattr(self, "trainer", None)
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        if replicas > 1 and trainer._accelerator_connector.use_distributed_sampler:
            raise ConfigError(
                "set trainer.use_distributed_sampler to false: IMDBDataModule gives each process its own "
                "shard of length-bucketed batches, which Lightning's sampler would undo"
            )
        hp = self.hparams
        batch_size = hp.batch_size if shuffle else hp.eval_batch_size or 2 * hp.batch_size
        order = DistributedSampler(data, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=hp.split_seed)
        if shuffle and not hp.bucketing:
            batches = BatchSampler(order, batch_size, drop_last=False)
        else:
            batches = BucketBatchSampler(order, data.lengths, batch_size)
        return DataLoader(
            data, batch_sampler=batches, collate_fn=collate, num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    # The tokenizer travels in every checkpoint as plain JSON, so a checkpoint alone classifies text.
    def state_dict(self) -> dict:
        hp = self.hparams
        return {
            "tokenizer": self.get_tokenizer().to_str(),
            "max_length": hp.max_length,
            "truncation": hp.truncation,
        }

    def load_state_dict(self, state: dict) -> None:
        restored = Tokenizer.from_str(state["tokenizer"])
        if self.tokenizer is not None and self.tokenizer.to_str() != restored.to_str():
            self._datasets.clear()  # re-encode with the checkpoint's vocabulary
        self.tokenizer = restored
