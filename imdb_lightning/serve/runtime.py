"""Classify reviews with an exported imdb-lightning model, without Lightning installed.

`imdb-lightning export` copies this file beside the model as `classify.py`. It needs numpy,
tokenizers and either onnxruntime (ONNX export) or torch (TorchScript export):

    python classify.py "A wonderful film." "Dull and far too long."
    python classify.py < reviews.txt
    >>> from classify import ExportedClassifier; ExportedClassifier("export_dir").predict(["..."])

The batching below is also what `imdb_lightning.load(...).predict` uses, so the exported model
sees exactly the token ids the checkpoint does. This file imports nothing from imdb_lightning:
it travels alone.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

PAD_ID, UNK_ID = 0, 1  # as in imdb_lightning/data/tokenizer.py (a test checks)
# Reviews per forward pass: 64 ran faster than 256 on a 2-core CPU (`imdb-lightning bench` reports 16/64/256).
BATCH_SIZE = 64


def padded_batches(
    tokenizer: Tokenizer, texts: list[str], max_length: int, truncation: str = "head", batch_size: int = BATCH_SIZE
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, input_ids, lengths) batches of similar-length reviews; `rows` maps them back to `texts`."""
    reviews = []
    # a missing review (None) reads as an empty one, as in training
    for encoding in tokenizer.encode_batch_fast(["" if t is None else str(t) for t in texts], add_special_tokens=False):
        ids = encoding.ids or [UNK_ID]  # an empty review reads as one unknown word
        reviews.append(ids[-max_length:] if truncation == "tail" else ids[:max_length])
    lengths = np.array([len(r) for r in reviews], dtype=np.int64)
    order = np.argsort(lengths, kind="stable")  # sorted: little padding per batch
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids = np.full((len(rows), lengths[rows].max()), PAD_ID, dtype=np.int64)  # (batch, time)
        for i, row in enumerate(rows):
            input_ids[i, : lengths[row]] = reviews[row]
        yield rows, input_ids, lengths[rows]


class ExportedClassifier:
    """An exported model folder (model.onnx or model.pt, tokenizer.json, meta.json)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.max_length, self.truncation = meta["max_length"], meta["truncation"]
        if meta["format"] == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(folder / meta["file"]), providers=["CPUExecutionProvider"])
            self.probabilities = lambda ids, lengths: session.run(None, {"input_ids": ids, "lengths": lengths})[0]
        else:
            import torch

            module = torch.jit.load(str(folder / meta["file"]), map_location="cpu")

            @torch.no_grad()
            def probabilities(ids, lengths):
                return module(torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()

            self.probabilities = probabilities

    def predict(self, texts: list[str], batch_size: int = BATCH_SIZE) -> list[float]:
        """P(positive) per text, in input order."""
        probs = np.empty(len(texts), dtype=np.float64)
        for rows, ids, lengths in padded_batches(self.tokenizer, texts, self.max_length, self.truncation, batch_size):
            probs[rows] = self.probabilities(ids, lengths)
        return probs.tolist()


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="classify.py", description="Classify reviews with the exported model beside this file: label, "
        "P(positive) and the review, one per line.",
        epilog="With no REVIEW, reads one review per line from standard input. A review that starts with '-' goes "
        "after '--': classify.py -- \"-10/10, awful\"")
    parser.add_argument("reviews", nargs="*", metavar="REVIEW", help="a review to classify")
    reviews = parser.parse_args(argv).reviews or [line.rstrip("\n") for line in sys.stdin]
    for text, p in zip(reviews, ExportedClassifier(Path(__file__).parent).predict(reviews)):
        print(f"{'positive' if p >= 0.5 else 'negative'}\t{p:.4f}\t{text[:80]}")


if __name__ == "__main__":
    main(sys.argv[1:])
