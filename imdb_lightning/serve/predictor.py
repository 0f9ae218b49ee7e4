"""Classify raw text from a checkpoint alone: `imdb_lightning.load(path).predict(texts)`.

One loader per model family, `load` choosing by the path: a sentiment classifier's checkpoint
(`load_checkpoint`), or a run folder of `imdb-lightning linear` (`load_linear_run`): its linear
reference, or its stack of one with recurrent checkpoints (`linear --combine`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from ..checkpoints import data_state, expect_kind, read_checkpoint
from ..errors import UserError
from ..models.classifier import SentimentClassifier
from ..models.encoders import build_encoder
from ..models.linear import LINEAR_FILE, LinearReference, Stack
from ..runs import read_record, stack_checkpoints
from .runtime import BATCH_SIZE, padded_batches


class Predictor:
    """A trained classifier with its tokenizer; `predict` returns P(positive) per text, in input order."""

    def __init__(self, model: SentimentClassifier, tokenizer: Tokenizer, max_length: int, truncation: str = "head"):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.truncation = max_length, truncation

    def predict(self, texts: list[str], batch_size: int = BATCH_SIZE) -> list[float]:
        return (1 / (1 + np.exp(-self.logits(texts, batch_size)))).tolist()

    @torch.inference_mode()
    def logits(self, texts: list[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
        """The classifier's logit per text, in input order: (texts,)."""
        if isinstance(texts, str):
            raise TypeError("predict takes a list of texts; wrap a single review as [text]")
        out = np.empty(len(texts), dtype=np.float64)
        device = next(self.model.parameters()).device
        for rows, ids, lengths in padded_batches(self.tokenizer, texts, self.max_length, self.truncation, batch_size):
            out[rows] = self.model(torch.from_numpy(ids).to(device), torch.from_numpy(lengths).to(device)).float().cpu().numpy()
        return out


class LinearPredictor(Predictor):
    """A linear reference or a stack (`imdb-lightning linear` run folders): Predictor's `predict` on its logits."""

    def __init__(self, model: LinearReference | Stack):
        self.model = model  # no tokenizer of its own: the linear model and each stacked Predictor bring theirs

    def logits(self, texts: list[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("predict takes a list of texts; wrap a single review as [text]")
        return self.model.logits(list(texts))  # (texts,)


def load_linear_run(folder: Path, device: torch.device) -> LinearPredictor:
    linear = LinearReference.load(folder / LINEAR_FILE)
    record = read_record(folder)
    if not record.get("checkpoints"):
        return LinearPredictor(linear)
    # (named relative to the stack's folder, with their digests: runs.py finds and checks them)
    partners = [load_checkpoint(c, device) for c in stack_checkpoints(folder, record)]
    return LinearPredictor(Stack(linear, partners, record["weights"]))


def load(path: str | Path, device: str = "cpu") -> Predictor | LinearPredictor:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {str(device)!r}: no CUDA GPU is available here")
    if Path(path).is_dir():
        if (Path(path) / LINEAR_FILE).is_file():
            return load_linear_run(Path(path), device)
        raise UserError(f"{path}: is a folder: give a checkpoint file, or a run folder of `imdb-lightning linear` "
                        f"(one with {LINEAR_FILE})")
    return load_checkpoint(path, device)


def load_checkpoint(path: str | Path, device: torch.device) -> Predictor:
    ckpt = read_checkpoint(path)
    expect_kind(path, ckpt, "sentiment", "predict, export and imdb_lightning.load each")
    hp = ckpt["hyper_parameters"]
    model = SentimentClassifier(build_encoder(hp["encoder"]), dropout=hp.get("dropout", 0.0))
    # The encoder and head are what predicts; training-time state (metric accumulators) may differ
    # between versions and is not needed here.
    weights = {k: v for k, v in ckpt["state_dict"].items() if k.startswith(("encoder.", "head."))}
    model.load_state_dict(weights, strict=False)
    missing = [k for k in model.state_dict() if k.startswith(("encoder.", "head.")) and k not in weights]
    if missing:
        raise UserError(f"{path}: the checkpoint lacks weights for {', '.join(missing[:3])}")
    data = data_state(ckpt)
    return Predictor(model.to(device), Tokenizer.from_str(data["tokenizer"]), data["max_length"], data.get("truncation", "head"))
