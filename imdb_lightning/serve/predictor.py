"""Classify raw text from a checkpoint alone: `imdb_lightning.load(path).predict(texts)`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from ..errors import UserError
from ..models.checkpoints import data_state, expect_kind, read_checkpoint
from ..models.classifier import SentimentClassifier
from ..models.encoders import build_encoder
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


def load(path: str | Path, device: str = "cpu") -> Predictor:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {str(device)!r}: no CUDA GPU is available here")
    ckpt = read_checkpoint(path)
    expect_kind(path, ckpt, "sentiment", "imdb_lightning.load")
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
