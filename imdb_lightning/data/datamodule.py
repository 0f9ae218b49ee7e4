"""IMDBDataModule: raw reviews -> cached token ids -> length-bucketed, dynamically padded batches."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Optional, Union

import lightning as L
import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, DistributedSampler

from ..errors import ConfigError, check_ranges
from ..pretrained import resolve
from ..resume import train_position, training_progress
from ..runs import atomic_write, digest
from .batching import BucketBatchSampler, ResumableLoader, TokenizedReviews, collate
from .identity import check_resume, identity, reviews_digest
from .sources import Reviews, open_source
from .split import carve_validation
from .tokenizer import build_tokenizer, encode

SourceName = Literal["hub", "files", "aclimdb", "synthetic"]
ValSplit = Literal["auto", "grouped", "random"]

def _save_arrays(path: str, **arrays: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
        np.savez(f, **arrays)


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "imdb-lightning")


def writable_cache_dir(cache_dir: Optional[str]) -> Path:
    """The cache folder, made now: one that cannot be made fails here, in one line, before any run starts."""
    path = Path(cache_dir or default_cache_dir())
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"data.cache_dir {path}: cannot make that folder ({err.strerror or err}); "
                          "name a writable one") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"data.cache_dir {path}: not writable; name a writable folder")
    return path


class IMDBDataModule(L.LightningDataModule):
    """IMDB reviews as padded batches of `input_ids`, `lengths`, `labels` and `groups`.

    Args:
        source: hub | files | aclimdb | synthetic; by default `files` when `train_files` or
            `test_files` is given, `aclimdb` when `aclimdb_dir` is, else `hub`.
        train_files: parquet/csv/json/jsonl files with `text` and `label` columns.
        test_files: the same, for `test`; only `test` reads them.
        aclimdb_dir: the Stanford `aclImdb/` folder (train/pos, train/neg, test/..., urls_*.txt).
        hub_name: the Hugging Face dataset for the hub source.
        group_column: the column naming each review's film in `train_files` (default: `movie`,
            when the files have it).
        synthetic_size: reviews in the synthetic train split (the test split is half as many).
        synthetic_median_words: median review length of the synthetic corpus.
        val_split: how validation is carved from train: `grouped` holds out whole films (what the
            test split does: its films are not in train), `random` holds out reviews; `auto` is
            `grouped` whenever the films are known (files with a film column, aclImdb/ folders).
        val_fraction: share of train held out for validation, stratified by label.
        split_seed: seed of that split, of the training batch order and of the synthetic corpus
            (the run's own seed sets initialisation and dropout, so seeds compare models on the same batches).
        vocab_size: vocabulary cap including `<pad>` and `<unk>`; also the model's embedding rows.
        tokenizer_from: a checkpoint whose vocabulary to use instead of building one (set for you by
            `--model.pretrained`: the language model's).
        min_frequency: words seen fewer times in train become `<unk>`.
        lowercase: lowercase before tokenizing.
        max_length: tokens kept per review.
        truncation: keep the `head` or the `tail` of longer reviews.
        batch_size: training batch size (per process).
        eval_batch_size: validation/test batch size (default: 2 x batch_size).
        bucketing: length-bucketed training batches (else shuffled reviews of any length).
        num_workers: DataLoader workers; 0 is fastest on 2 cores, where a worker takes a core from the model.
        cache_dir: where tokenized data is kept (default ~/.cache/imdb-lightning).
    """

    def __init__(
        self,
        source: Optional[SourceName] = None,
        train_files: Optional[Union[str, list[str]]] = None,
        test_files: Optional[Union[str, list[str]]] = None,
        aclimdb_dir: Optional[str] = None,
        hub_name: str = "stanfordnlp/imdb",
        group_column: Optional[str] = None,
        synthetic_size: int = 4000,
        synthetic_median_words: int = 60,
        val_split: ValSplit = "auto",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        vocab_size: int = 20000,
        tokenizer_from: Optional[str] = None,
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
        check_ranges("data", dict(vocab_size=vocab_size, max_length=max_length, batch_size=batch_size,
                                  synthetic_size=synthetic_size, synthetic_median_words=synthetic_median_words,
                                  eval_batch_size=eval_batch_size),
                     dict(num_workers=num_workers, min_frequency=min_frequency), dict(val_fraction=val_fraction))
        if vocab_size < 3:
            raise ConfigError(f"data.vocab_size must leave room for a word beside <pad> and <unk>, got {vocab_size}")
        train_files = [train_files] if isinstance(train_files, str) else train_files
        test_files = [test_files] if isinstance(test_files, str) else test_files
        source, self.source = open_source(source, train_files=train_files or [], test_files=test_files or [],
                                          group_column=group_column, aclimdb_dir=aclimdb_dir, hub_name=hub_name,
                                          synthetic_size=synthetic_size, synthetic_median_words=synthetic_median_words,
                                          seed=split_seed)
        if source == "files" and not (train_files or test_files):
            raise ConfigError("data.source is 'files' but neither data.train_files nor data.test_files is set")
        if source != "files" and (train_files or test_files):
            raise ConfigError(f"data.train_files/test_files are given but data.source is {source!r} "
                              "(set --data.source files, or leave data.source out)")
        if group_column is not None and source != "files":
            raise ConfigError(f"data.group_column names a column of data files; data.source is {source!r}")
        self.save_hyperparameters()
        self.source_name = source
        self.cache_dir = writable_cache_dir(cache_dir)
        self.tokenizer: Optional[Tokenizer] = None
        self.validation: dict = {}  # how validation was carved: kind, fraction, reviews, films
        self._reviews: dict[str, Reviews] = {}
        self._datasets: dict[str, TokenizedReviews] = {}
        self._digests: dict[str, str] = {}  # "train" (every training review, before validation is carved), "val", "test"
        self._resume_at: Optional[dict] = None  # where a resumed fit's training data continue

    # --- raw data -------------------------------------------------------------------------
    def reviews(self, split: Literal["train", "val", "test"]) -> Reviews:
        """The raw reviews of a split; train and val are carved from the source's training data."""
        if split not in self._reviews:
            if split == "test":
                self._reviews["test"] = self.source.load("test")
            else:
                self._split(self.source.load("train"))
        return self._reviews[split]

    def _split(self, data: Reviews) -> None:
        hp = self.hparams
        self._digests["train"] = reviews_digest(data)
        (train, val), self.validation = carve_validation(data, hp.val_split, hp.val_fraction, hp.split_seed,
                                                         self.source_name, hp.group_column)
        self._reviews["train"], self._reviews["val"] = train, val

    # --- what the data are: the record of a run and of its checkpoints -----------------------------------
    def digest(self, split: Literal["train", "val", "test"]) -> str:
        """sha256 of a split's reviews ("train": all the training reviews, before validation is carved)."""
        if split not in self._digests:
            reviews = self.reviews("val" if split == "train" else split)  # (carving digests the training reviews)
            self._digests.setdefault(split, reviews_digest(reviews))
        return self._digests[split]

    def identity(self, split: Literal["fit", "val", "test"] = "fit") -> dict:
        """What the data are, for a record (data/identity.py)."""
        return identity(self, split)

    def check_resume(self, saved: Optional[dict], ckpt_path) -> None:
        check_resume(self, saved, ckpt_path)

    # --- tokenizer and cached token ids -----------------------------------------------------
    def split_key(self) -> list:
        hp = self.hparams
        return [self.source.fingerprint("train"), hp.val_split, hp.val_fraction, hp.split_seed]

    def _tokenizer_key(self) -> str:
        hp = self.hparams
        return digest(self.split_key(), hp.vocab_size, hp.min_frequency, hp.lowercase)

    def get_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None and self.hparams.tokenizer_from:
            self.tokenizer = Tokenizer.from_str(resolve(self.hparams.tokenizer_from).tokenizer)
        if self.tokenizer is None:
            path = self.cache_dir / f"tokenizer-{self._tokenizer_key()}.json"
            if path.is_file():
                self.tokenizer = Tokenizer.from_file(str(path))
            else:
                hp = self.hparams
                self.tokenizer = build_tokenizer(self.reviews("train").texts, hp.vocab_size, hp.min_frequency, hp.lowercase)
                atomic_write(path, lambda tmp: self.tokenizer.save(tmp))
        return self.tokenizer

    def dataset(self, split: Literal["train", "val", "test"]) -> TokenizedReviews:
        if split not in self._datasets:
            tokenizer = self.get_tokenizer()
            key = digest(split, self.source.fingerprint("test") if split == "test" else self.split_key(), tokenizer.to_str())
            path = self.cache_dir / f"{split}-{key}.npz"
            if path.is_file():
                with np.load(path, allow_pickle=False) as z:
                    arrays = {name: z[name] for name in ("ids", "offsets", "labels", "groups")}
                    self.validation = json.loads(str(z["validation"])) if split != "test" else self.validation
            else:
                reviews = self.reviews(split)
                ids, offsets = encode(tokenizer, reviews.texts)
                groups = reviews.groups if reviews.groups is not None else np.arange(len(reviews)).astype(str)
                arrays = {"ids": ids, "offsets": offsets, "labels": reviews.labels,
                          "groups": np.unique(groups.astype(str), return_inverse=True)[1].astype(np.int32)}
                atomic_write(path, lambda tmp: _save_arrays(tmp, validation=json.dumps(self.validation), **arrays))
            hp = self.hparams
            self._datasets[split] = TokenizedReviews(**arrays, max_length=hp.max_length, truncation=hp.truncation)
        return self._datasets[split]

    # --- Lightning hooks --------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Downloads only, once per node; tokenizing waits for the dataloaders, which Lightning
        # asks for after a checkpoint's tokenizer has been restored.
        if self.source_name == "hub" and not (self.cache_dir / f"tokenizer-{self._tokenizer_key()}.json").is_file():
            self.source.load("train")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self.dataset(split)
        trainer = getattr(self, "trainer", None)
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        hp = self.hparams
        batch_size = hp.batch_size if shuffle else hp.eval_batch_size or 2 * hp.batch_size
        # Each process takes its own shard; with one process the sampler only orders the data.
        order = DistributedSampler(data, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=hp.split_seed)
        # Pinned batches on a GPU: their copy to the device is then asynchronous, and the host runs ahead.
        on_gpu = trainer is not None and trainer.strategy.root_device.type == "cuda"
        options = dict(collate_fn=collate, num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0, pin_memory=on_gpu,
                       # its own generator: creating an iterator would otherwise draw from the global one,
                       # and a resumed run's dropout would no longer match an uninterrupted run's
                       generator=torch.Generator().manual_seed(hp.split_seed))
        batches = BucketBatchSampler(order, data.lengths, batch_size, pool=50 if hp.bucketing or not shuffle else 0)
        progress = (lambda: training_progress(trainer)) if trainer else (lambda: (0, 0))
        loader = ResumableLoader(data, batches, progress, **options)
        if shuffle and self._resume_at is not None:
            loader.load_state_dict(self._resume_at)
            self._resume_at = None
        return loader

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    # The tokenizer travels in every checkpoint as plain JSON, so a checkpoint alone classifies text, and
    # so does what its data were (`identity`), which a resume checks and `validate`/`test` read.
    # So does the training data's position: Lightning restores a data module before it asks for the
    # training data (the loop's own copy of the position arrives after, too late when a schedule
    # sized to the run made Lightning load the data early).
    def state_dict(self) -> dict:
        hp = self.hparams
        return {"tokenizer": self.get_tokenizer().to_str(), "max_length": hp.max_length, "truncation": hp.truncation,
                "data": self.identity(), **train_position(self)}

    def load_state_dict(self, state: dict) -> None:
        restored = Tokenizer.from_str(state["tokenizer"])
        if self.tokenizer is not None and self.tokenizer.to_str() != restored.to_str():
            self._datasets.clear()  # re-encode with the checkpoint's vocabulary
        self.tokenizer = restored
        self._resume_at = state.get("train_position")
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.state.fn == "fit":  # (restored before anything of the run is written)
            self.check_resume(state.get("data"), trainer.ckpt_path)
