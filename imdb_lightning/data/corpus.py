"""Text for language-model pretraining: unlabelled reviews plus the classifier's training split.

The reviews are tokenized with a vocabulary built on this corpus (stored in the LM's checkpoint
and reused by the classifier it is fine-tuned into), joined into one stream of token ids, and cut
into `batch_size` parallel streams read `bptt` tokens at a time, in order, so the language model
can carry its state from one window to the next (truncated backpropagation through time).

Never in the corpus: test reviews, and the classifier's validation reviews (the same split
`fit` carves with the same data settings), or the validation figure of the fine-tuned model
would stop being honest. The checkpoint records a digest of every review the corpus holds, so a
fine-tuning run on another split is refused (pretrained.check_unread).
"""

from __future__ import annotations

import json
from typing import Literal, Optional, Union

import lightning as L
import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError, check_ranges
from ..pretrained import text_digests
from ..resume import train_position
from ..runs import atomic_write, digest
from .datamodule import IMDBDataModule, writable_cache_dir
from .sources import PRETRAIN_HUB_HELP, FileSource, open_source
from .tokenizer import build_tokenizer, encode


class Windows(Dataset):
    """A token stream as `streams` parallel rows, read `bptt` tokens at a time (item i: window i)."""

    def __init__(self, ids: np.ndarray, streams: int, bptt: int):
        usable = (len(ids) - 1) // streams * streams  # one extra token: the last window's targets
        if usable < streams * 2:
            raise DataError(f"the corpus has {len(ids)} tokens, too few for {streams} streams; "
                            "use more text or a smaller data.batch_size")
        per_stream = usable // streams
        ids = torch.from_numpy(ids[: usable + 1].astype(np.int64))
        self.inputs = ids[:usable].view(streams, per_stream)  # (streams, tokens per stream)
        self.targets = ids[1 : usable + 1].view(streams, per_stream)  # the next word of each
        self.bptt = bptt

    def __len__(self) -> int:
        return -(-self.inputs.shape[1] // self.bptt)

    def __getitem__(self, i: int) -> dict:
        window = slice(i * self.bptt, (i + 1) * self.bptt)
        return {"input_ids": self.inputs[:, window], "targets": self.targets[:, window]}  # (streams, <= bptt)


class InOrder(Sampler[int]):
    """Windows 0, 1, 2, ... every epoch; `skip` of them are left out of the next pass only (a resumed epoch)."""

    def __init__(self, count: int, skip: int = 0):
        self.count, self.skip = count, skip

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        start, self.skip = self.skip, 0
        return iter(range(start, self.count))


class CorpusDataModule(L.LightningDataModule):
    """Unlabelled reviews (+ the classifier's training texts) as token streams for a language model.

    Args:
        source: where the unlabelled reviews come from: files | hub (`unsupervised` split) |
            aclimdb (`train/unsup/`) | synthetic; by default `files` when `unlabelled_files` is given.
        unlabelled_files: parquet/csv/json/jsonl files with a `text` column.
        train_files: the classifier's labelled training files; their training split joins the
            corpus (`--data.use_train_texts false` to leave it out), their validation split never does.
        aclimdb_dir, hub_name, synthetic_size: as for `fit`.
        group_column, val_split, val_fraction, split_seed: the classifier's split, as for `fit`:
            give the same values the fine-tuning `fit` will use.
        use_train_texts: add the training split's texts of `train_files` / the aclImdb / hub / synthetic train split.
        vocab_size, min_frequency, lowercase: the vocabulary, built on this corpus.
        batch_size: parallel streams per batch.
        bptt: tokens per window (the truncation of backpropagation through time).
        heldout_fraction: share of the corpus's reviews held out to measure perplexity.
        cache_dir: where the tokenized corpus is kept (default ~/.cache/imdb-lightning).
        reverse: read the corpus backwards (a backward language model); `pretrain` sets it from the
            encoder's `reverse`.
    """

    def __init__(
        self,
        source: Optional[Literal["files", "hub", "aclimdb", "synthetic"]] = None,
        unlabelled_files: Optional[Union[str, list[str]]] = None,
        train_files: Optional[Union[str, list[str]]] = None,
        aclimdb_dir: Optional[str] = None,
        hub_name: str = "stanfordnlp/imdb",
        synthetic_size: int = 4000,
        group_column: Optional[str] = None,
        val_split: Literal["auto", "grouped", "random"] = "auto",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        use_train_texts: bool = True,
        vocab_size: int = 30000,
        min_frequency: int = 2,
        lowercase: bool = True,
        batch_size: int = 32,
        bptt: int = 70,
        heldout_fraction: float = 0.02,
        cache_dir: Optional[str] = None,
        reverse: bool = False,
    ):
        super().__init__()
        check_ranges("data", dict(vocab_size=vocab_size, batch_size=batch_size, bptt=bptt), dict(min_frequency=min_frequency),
                     dict(heldout_fraction=heldout_fraction))
        unlabelled_files = [unlabelled_files] if isinstance(unlabelled_files, str) else unlabelled_files or []
        train_files = [train_files] if isinstance(train_files, str) else train_files or []
        # (the labelled train_files are read by the classifier's data module below, not by this source)
        source, self.source = open_source(source or ("files" if train_files else None), unlabelled_files=unlabelled_files,
                                          aclimdb_dir=aclimdb_dir, hub_name=hub_name, synthetic_size=synthetic_size,
                                          seed=split_seed, hub_help=PRETRAIN_HUB_HELP)
        self.save_hyperparameters()
        # The classifier's data: only its training split is read, carved exactly as `fit` carves it.
        if source == "files":
            labelled = dict(train_files=train_files)
        else:
            labelled = dict(source=source, aclimdb_dir=aclimdb_dir, hub_name=hub_name, synthetic_size=synthetic_size)
        self.labelled = None
        if use_train_texts and (source != "files" or train_files):
            self.labelled = IMDBDataModule(**labelled, group_column=group_column, val_split=val_split,
                                           val_fraction=val_fraction, split_seed=split_seed, cache_dir=cache_dir)
        self.cache_dir = writable_cache_dir(cache_dir)
        self.tokenizer: Optional[Tokenizer] = None
        self._streams: dict[str, np.ndarray] = {}
        self._read: Optional[np.ndarray] = None  # text_digests of every review in the corpus
        self._resume_at: Optional[dict] = None  # where a resumed pretraining's windows continue

    def texts(self) -> list[str]:
        """The corpus: unlabelled reviews, then the classifier's training-split reviews."""
        texts = self.source.load("unlabelled").texts if self._has_unlabelled() else []
        if self.labelled is not None:
            texts = texts + self.labelled.reviews("train").texts
        if not texts:
            raise DataError("no text to pretrain on: pass --data.unlabelled_files (or --data.train_files)")
        return texts

    def _has_unlabelled(self) -> bool:
        return bool(self.hparams.unlabelled_files) or not isinstance(self.source, FileSource)

    def _key(self) -> str:
        hp = self.hparams
        parts = [self.source.fingerprint("unlabelled") if self._has_unlabelled() else None]
        if self.labelled is not None:
            parts.append(self.labelled.split_key())
        return digest("corpus", 2, parts, hp.vocab_size, hp.min_frequency, hp.lowercase, hp.heldout_fraction, hp.split_seed)

    def stream(self, split: Literal["train", "val"]) -> np.ndarray:
        """The split's reviews' token ids, joined in a seeded order: (tokens,)."""
        if split not in self._streams:
            path = self.cache_dir / f"corpus-{self._key()}.npz"
            if path.is_file():
                with np.load(path, allow_pickle=False) as z:
                    self._streams = {"train": z["train"], "val": z["val"]}
                    self._read = z["read"]
                    self.tokenizer = self.tokenizer or Tokenizer.from_str(str(z["tokenizer"]))
            else:
                hp = self.hparams
                texts = self.texts()
                tokenizer = self.tokenizer or build_tokenizer(texts, hp.vocab_size, hp.min_frequency, hp.lowercase)
                ids, offsets = encode(tokenizer, texts)
                if len(texts) < 2:
                    raise DataError(f"the corpus has {len(texts)} review(s): a language model needs at least two, one of "
                                    "them held out to measure it; give more unlabelled reviews (--data.unlabelled_files)")
                order = np.random.default_rng(hp.split_seed).permutation(len(texts))
                held = max(1, int(round(hp.heldout_fraction * len(texts))))
                pieces = {"val": order[:held], "train": order[held:]}
                self._streams = {name: np.concatenate([ids[offsets[i] : offsets[i + 1]] for i in rows])
                                 for name, rows in pieces.items()}
                self.tokenizer, self._read = tokenizer, text_digests(texts)
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                atomic_write(path, lambda tmp: np.savez(open(tmp, "wb"), tokenizer=tokenizer.to_str(), read=self._read,
                                                        **self._streams))
        return self._streams[split]

    def get_tokenizer(self) -> Tokenizer:
        self.stream("train")
        return self.tokenizer

    def _loader(self, split: str) -> DataLoader:
        stream = self.stream(split)
        if self.hparams.reverse:  # a backward language model: every review last word first, the last review first
            stream = np.ascontiguousarray(stream[::-1])
        windows = Windows(stream, self.hparams.batch_size, self.hparams.bptt)
        skip = 0
        if split == "train" and self._resume_at is not None:  # the first training loader of a resumed run
            skip, self._resume_at = self._resume_at["batches_done"], None
        return DataLoader(windows, batch_size=None, sampler=InOrder(len(windows), skip))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def state_dict(self) -> dict:
        # What the classifier reuses: the vocabulary. (`kind` lets a reader tell it from a classifier's.)
        # Which reviews it read (`read`: text_digests), so a fine-tuning run can refuse to validate on them.
        # And, as for `fit`, how many windows of the current epoch were trained (see IMDBDataModule.state_dict).
        return {"tokenizer": self.get_tokenizer().to_str(), "corpus": json.dumps({"tokens": int(len(self.stream("train")))}),
                "read": torch.from_numpy(self._read), "read_labelled": self.labelled is not None, **train_position(self)}

    def load_state_dict(self, state: dict) -> None:
        self.tokenizer = Tokenizer.from_str(state["tokenizer"])
        self._resume_at = state.get("train_position")
