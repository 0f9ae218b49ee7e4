"""`--model.pretrained`: a language model checkpoint (`imdb-lightning pretrain`), read once into one value.

The fine-tuning run takes four things from it: its vocabulary size (the embedding's), its tokenizer (the
data module's), its encoder weights (the classifier's encoder), and the digests of the reviews it read (so
no validation or test review of the fine-tuning run was among them). `resolve(path)` reads the checkpoint
once per process and hands the same `Pretrained` to each of them.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from torch import nn

from .checkpoints import data_state, expect_kind, read_checkpoint
from .errors import UserError


@dataclass(frozen=True)
class Pretrained:
    path: str
    vocab_size: int
    tokenizer: str  # the tokenizer as JSON
    weights: dict  # the encoder's weights, named as in the encoder (`embedding.weight`, `layers.0.0...`)
    reverse: bool  # a backward language model: it read each review from its last word
    read: Optional[np.ndarray]  # text_digests of every review it read; None for checkpoints from before that record
    read_labelled: Optional[bool]  # whether labelled training reviews were among them; None: from before it was saved
    settings: dict  # its data module's settings


def resolve(path: str) -> Pretrained:
    file = Path(path)
    stat = file.stat() if file.is_file() else None  # (a changed file is read again)
    return _read(str(path), stat and (stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=4)
def _read(path: str, _version) -> Pretrained:
    ckpt = read_checkpoint(path)
    expect_kind(path, ckpt, "language_model", "fit --model.pretrained")
    state, encoder = data_state(ckpt), ckpt["hyper_parameters"]["encoder"]["init_args"]
    read = state.get("read")
    return Pretrained(
        path=path, vocab_size=encoder["vocab_size"], tokenizer=state["tokenizer"],
        weights={k.removeprefix("encoder."): v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")},
        reverse=bool(encoder.get("reverse", False)), read=None if read is None else read.numpy(),
        read_labelled=state.get("read_labelled"), settings=dict(ckpt.get("datamodule_hyper_parameters") or {}))


def text_digests(texts: list[str]) -> np.ndarray:
    """An 8-byte digest of each review, sorted: what a language model's checkpoint keeps of the reviews it read,
    so a fine-tuning run can check that it validates and tests on none of them."""
    digests = [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little", signed=True) for t in texts]
    return np.unique(np.array(digests, dtype=np.int64))


SPLIT_SETTINGS = ("train_files", "group_column", "val_split", "val_fraction", "split_seed")


def read_labelled(settings: dict) -> bool:
    """Whether a language model with these data settings read labelled training reviews beside its
    unlabelled ones (what CorpusDataModule does: use_train_texts with a source of labelled reviews), for
    checkpoints from before their data state said so (`read_labelled`)."""
    labelled_source = settings.get("source") in ("hub", "aclimdb", "synthetic") or settings.get("aclimdb_dir") or (
        settings.get("source") is None and not settings.get("unlabelled_files"))
    return bool(settings.get("use_train_texts", True) and (settings.get("train_files") or labelled_source))


def _files(value):
    """A setting as compared between runs: one file or a list of them read alike, nothing as None."""
    return [value] if isinstance(value, str) else value or None


def check_unread(lm: Pretrained, texts: list[str], split: str, data: Optional[dict] = None) -> None:
    """Refuse a fine-tuning run whose validation (or test) reviews its language model read as labelled training
    reviews: it was pretrained beside another split (another data.split_seed, val_split, val_fraction or
    train_files), so the figure would not be a held-out one. Reviews it read as copies among its unlabelled
    reviews (IMDB's unlabelled set repeats a few labelled reviews word for word), or as copies within its own
    split, are named in one line: the text without its label."""
    path, read = lm.path, lm.read
    if read is None:
        print(f"imdb-lightning: model.pretrained {path} predates the record of the reviews it read: nothing checks that "
              f"this run's {split} reviews are not among them (pretrain again to have it checked)", file=sys.stderr)
        return
    seen = int(np.isin(text_digests(texts), read).sum())
    if not seen:
        return
    settings = lm.settings
    same_split = data is not None and all(_files(settings.get(k)) == _files(data.get(k)) for k in SPLIT_SETTINGS)
    if (read_labelled(settings) if lm.read_labelled is None else lm.read_labelled) and not same_split:
        split_of = ", ".join(f"{k} {settings[k]}" for k in ("split_seed", "val_split", "val_fraction") if k in settings)
        raise UserError(f"model.pretrained {path}: its language model read {seen} of this run's {len(texts)} {split} reviews "
                        f"(it was pretrained beside the split {split_of or 'of other data'}), so its {split} figures would "
                        "not be held out; pretrain with this run's data settings (--data.split_seed, --data.val_split, "
                        "--data.val_fraction, --data.train_files) or use that split")
    print(f"imdb-lightning: model.pretrained {path}: its language model read the text (not the label) of {seen} of this "
          f"run's {len(texts)} {split} reviews, as copies of them among the reviews it pretrained on "
          f"({100 * seen / len(texts):.2f}%)", file=sys.stderr)


def load_pretrained(encoder: nn.Module, lm: Pretrained, layers: str = "all") -> None:
    """Copy a language model's weights into `encoder`: all its embedding and recurrent weights (`layers="all"`),
    which needs the same cell and sizes; the same into the forward direction of a bidirectional encoder
    (`"forward"`: its backward direction, which reads the review right to left, starts fresh); or only its word
    embedding (`"embedding"`), which any encoder with an `embedding` of the same width can take (a bidirectional
    or SimpleRNN encoder, a bag of words)."""
    path, weights, backward = lm.path, lm.weights, lm.reverse
    own = encoder.state_dict()
    if layers != "embedding" and backward != bool(getattr(encoder, "reverse", False)):
        # the recurrent weights predict the next word in one reading direction: the classifier must read the same way
        way = ("backwards (its encoder has reverse: true); give the classifier's encoder reverse: true",
               "forwards; give the classifier's encoder reverse: false")[not backward]
        raise UserError(f"model.pretrained {path}: its language model reads reviews {way} "
                        "(or take its embedding alone: model.pretrained_layers: embedding)")
    if layers == "embedding":
        table, here = weights["embedding.weight"], own.get("embedding.weight")
        if here is None or here.shape != table.shape:
            raise UserError(f"model.pretrained {path}: its word embedding is {tuple(table.shape)}, the encoder's is "
                            f"{tuple(here.shape) if here is not None else 'absent'}; give the encoder the language "
                            f"model's embed_dim ({table.shape[1]}) and vocabulary ({table.shape[0]} words)")
        encoder.load_state_dict({"embedding.weight": table}, strict=False)
        return
    if layers == "forward" and not getattr(encoder, "bidirectional", False):
        raise UserError(f"model.pretrained {path}: pretrained_layers forward fills a bidirectional encoder's forward "
                        "direction; this encoder reads one way, so take all the language model's layers (pretrained_layers: all)")
    for name, tensor in weights.items():
        if name not in own or own[name].shape != tensor.shape:
            here = tuple(own[name].shape) if name in own else "absent"
            raise UserError(f"model.pretrained {path}: encoder weight {name} is {tuple(tensor.shape)} there, {here} here; "
                            "give the classifier's encoder the language model's cell, embed_dim, hidden_size and "
                            "num_layers (bidirectional: false, or true with pretrained_layers: forward for one layer), "
                            "or take its embedding alone (model.pretrained_layers: embedding)")
    # layers.<layer>.<direction>: direction 1 reads backwards, which a left-to-right language model never learnt
    fresh = re.compile(r"bigrams|layers\.\d+\.1\." if layers == "forward" else r"bigrams")
    missing = [name for name in own if name not in weights and not fresh.match(name)]
    if missing:
        raise UserError(f"model.pretrained {path}: the language model has no {missing[0]}; the classifier's encoder "
                        "must be the same kind (cell, num_layers, bidirectional: false; a one-layer bidirectional one takes it "
                        "with pretrained_layers: forward), or take its embedding alone "
                        "(model.pretrained_layers: embedding)")
    encoder.load_state_dict(weights, strict=False)
